"""Step rules that draw fresh noise or call the model more than once per step: DPM-Solver++(2M) SDE, EDM's Heun
sampler with stochastic churn, and Restart sampling. They run in the one sampler loop (:mod:`ddpmkit.sampling`).

Notation (a VP process observed at training timesteps t): α_t = √ᾱ_t, σ_t = √(1-ᾱ_t), λ_t = log(α_t/σ_t). The EDM
rules work in Karras et al. 2022's variance-exploding coordinates, where every VP process is the same ODE:

    x̄ = x / α_t,   s_t = σ_t / α_t = √((1-ᾱ_t)/ᾱ_t),   dx̄/ds = (x̄ - x̂_0)/s = ε̂(x, t)           (EDM eq. 4, s(t) = 1)

so an Euler step is x̄' = x̄ + (s' - s) ε̂ (it equals DDIM, η = 0) and Heun's averages ε̂ at both ends. A sampler's
``steps`` is its number of model evaluations (NFE) for every rule here, so that samplers compare at equal cost: each
rule's ``grid`` says how many timesteps of the loop's grid an NFE budget buys, and the rest of the budget goes to
its extra evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from .diffusion import Diffusion, ReverseStep

NoiseFn = Callable[[], Tensor]

# EDM (Karras et al. 2022), table 5, ImageNet-64: S_churn = 40, S_tmin = 0.05, S_tmax = 50, S_noise = 1.003
EDM_CHURN, EDM_S_TMIN, EDM_S_TMAX, EDM_S_NOISE = 40.0, 0.05, 50.0, 1.003
# Restart (Xu et al. 2023) ran [s_min, s_max] = [0.1, 2] with many Heun steps in Stable Diffusion's latent space; at a
# few evaluations the restart gets one Heun step, and over [0.1, 2] one step doubles the spread of Gaussian data that
# it should shrink (Heun's trapezoid over a 20x change of s), so ours is a short low-noise interval where one step is
# accurate: on the oracle the one-step map is within 1 % of the exact one
RESTART_S_MIN, RESTART_S_MAX = 0.06, 0.3


class Denoiser(Protocol):
    """The model at any training timestep: ``denoise(x, t) -> (x̂_0, ε̂)``, and the schedule's ᾱ over all T."""

    alphas_cumprod: Tensor  # float64, on the CPU

    def __call__(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]: ...


def half_log_snr(alpha_cumprod: float) -> float:
    """λ = log(α/σ) = ½ log(ᾱ/(1 - ᾱ)); -∞ at SNR 0."""
    return 0.5 * math.log(alpha_cumprod / (1.0 - alpha_cumprod)) if alpha_cumprod > 0 else -math.inf


def ve_sigma(alpha_cumprod: float) -> float:
    """s = √((1-ᾱ)/ᾱ), the noise level in EDM's coordinates; 0 for clean data, ∞ at SNR 0."""
    return math.sqrt((1.0 - alpha_cumprod) / alpha_cumprod) if alpha_cumprod > 0 else math.inf


def _grid_alphas(process: Diffusion, i: int) -> tuple[int, float, int, float]:
    """(t_i, ᾱ_i, t_{i-1}, ᾱ_{i-1}) of the loop's grid; t = -1, ᾱ = 1 after the last step."""
    t_next = int(process.timesteps[i - 1]) if i > 0 else -1
    return (int(process.timesteps[i]), float(process.schedule.alphas_cumprod[i]), t_next,
            float(process.schedule.alphas_cumprod_prev[i]))


def _nearest_t(alphas_cumprod: Tensor, sigma: float) -> int:
    """The training timestep whose s_t is nearest ``sigma`` in log s."""
    ac = alphas_cumprod.clamp(min=1e-300)
    log_s = 0.5 * (torch.log1p(-ac) - torch.log(ac))
    return int((log_s - math.log(sigma)).abs().argmin())


# ----- DPM-Solver++(2M) SDE ---------------------------------------------------------------------------------

class DPMSolver2MSDEStep:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", section 5 and appendix; diffusers' ``DPMSolverMultistep
    Scheduler`` with ``algorithm_type="sde-dpmsolver++"``, midpoint form), with h = λ_{i-1} - λ_i:

        D      = x̂_0,i (first step) or x̂_0,i + (x̂_0,i - x̂_0,i+1)/(2r),   r = h_prev/h
        x_{i-1} = (σ_{i-1}/σ_i) e^{-h} x_i + α_{i-1} (1 - e^{-2h}) D + σ_{i-1} √(1 - e^{-2h}) z.

    Its first-order form is DDPM's ancestral step (the posterior mean with β̃). The last step returns x̂_0 (σ = 0).
    One instance per run: it remembers the previous x̂_0 and h.
    """

    def __init__(self) -> None:
        self.x0_prev: Tensor | None = None
        self.h_prev: float | None = None

    def __call__(self, process: Diffusion, i: int, x: Tensor, out: ReverseStep, noise: NoiseFn,
                 denoise: Denoiser | None = None) -> Tensor:
        if i == 0:
            return out.x0
        _, a_t, _, a_s = _grid_alphas(process, i)
        h = half_log_snr(a_s) - half_log_snr(a_t)
        if self.x0_prev is None or not math.isfinite(self.h_prev):
            d = out.x0
        else:
            d = out.x0 + (out.x0 - self.x0_prev) * (h / (2 * self.h_prev))
        self.x0_prev, self.h_prev = out.x0, h
        decay = math.exp(-h)  # 0 from SNR 0
        ratio = math.sqrt((1 - a_s) / (1 - a_t)) * decay
        return ratio * x + math.sqrt(a_s) * (1 - decay**2) * d + math.sqrt((1 - a_s) * (1 - decay**2)) * noise()


# ----- EDM: Heun with stochastic churn ----------------------------------------------------------------------

def heun_corrections(nfe: int) -> tuple[int, int]:
    """(grid points K, Heun corrections) for ``nfe`` evaluations: K + corrections = nfe, corrections ≤ K - 2.

    The last step, to s = 0, is Euler (EDM algorithm 1, line 8), and so is the first, from the top of the schedule:
    there s_T is in the hundreds (a cosine schedule has ᾱ_T ≈ 1e-5, far above EDM's s_max = 80), and a trapezoid over
    a step from s ≈ 300 to s ≈ 2 multiplies the difference of the two ε̂ by 300, while Euler is exact in the limit
    s ≫ data scale (there x̄ ∝ s). Heun over K points costs 2K - 2; an odd budget leaves one more step Euler.
    """
    points = min(nfe, (nfe + 3) // 2)
    return points, nfe - points


class EDMStep:
    """Karras et al. 2022, algorithm 2 (stochastic; ``churn = 0`` is algorithm 1, the deterministic Heun sampler),
    with the loop's grid as the levels the model is evaluated at.

    From grid point t_i (x̄, s_i, the loop's ε̂) to the next t_{i-1}: with γ = min(S_churn/N, √2 - 1) when
    S_tmin ≤ s_{i-1} ≤ S_tmax, else 0, step down to the lower level ŝ = s_{i-1}/(1 + γ) (the training timestep
    nearest it, no lower than t_{i-1}'s neighbour)

        x̄' = x̄ + (ŝ - s_i) ε̂_i                             Euler
        x̄' = x̄ + (ŝ - s_i) ½(ε̂_i + ε̂(x̄', ŝ))                Heun, for the last ``corrections`` steps before the end

    then add fresh noise back up to the grid's level: x̄_{i-1} = x̄' + S_noise √(s_{i-1}² - ŝ²) z. That is EDM's
    "raise the noise by γ, then solve down" with the raised levels on the grid (the model is only ever called at
    training timesteps), read one step later. The last step returns x̂_0. From SNR 0 (a zero-terminal-SNR start)
    the first step is DDIM's. One instance per run.
    """

    def __init__(self, corrections: int, steps: int, churn: float = 0.0, s_tmin: float = EDM_S_TMIN,
                 s_tmax: float = EDM_S_TMAX, s_noise: float = EDM_S_NOISE) -> None:
        self.corrections = corrections
        self.gamma = min(churn / steps, math.sqrt(2) - 1) if churn > 0 else 0.0
        self.s_tmin, self.s_tmax, self.s_noise = s_tmin, s_tmax, s_noise

    @staticmethod
    def heun(x: Tensor, a_t: float, x0: Tensor, eps: Tensor, t_to: int, a_to: float, denoise: Denoiser,
             correct: bool) -> Tensor:
        """x at ᾱ_t with (x̂_0, ε̂) there → x at (t_to, ᾱ_to): Euler, plus Heun's correction when ``correct``."""
        if a_t <= 0.0:  # from SNR 0 (x̄ = ∞): DDIM's first step, x = √ᾱ' x̂_0 + √(1-ᾱ') ε̂
            return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps
        s_t, s_to = ve_sigma(a_t), ve_sigma(a_to)
        x_bar = x / math.sqrt(a_t) + (s_to - s_t) * eps
        if correct:
            _, eps_to = denoise(math.sqrt(a_to) * x_bar, t_to)
            x_bar = x / math.sqrt(a_t) + (s_to - s_t) * 0.5 * (eps + eps_to)
        return math.sqrt(a_to) * x_bar

    def lower_level(self, t_next: int, a_next: float, alphas_cumprod: Tensor) -> tuple[int, float]:
        """The level ŝ = s_{i-1}/(1 + γ) the step solves down to (t_{i-1} itself without churn)."""
        s_next = ve_sigma(a_next)
        if self.gamma <= 0 or not self.s_tmin <= s_next <= self.s_tmax:
            return t_next, a_next
        t_low = min(_nearest_t(alphas_cumprod, s_next / (1 + self.gamma)), t_next)
        return t_low, float(alphas_cumprod[t_low])

    def __call__(self, process: Diffusion, i: int, x: Tensor, out: ReverseStep, noise: NoiseFn,
                 denoise: Denoiser) -> Tensor:
        if i == 0:
            return out.x0
        _, a_t, t_next, a_next = _grid_alphas(process, i)
        t_low, a_low = self.lower_level(t_next, a_next, denoise.alphas_cumprod)
        x = self.heun(x, a_t, out.x0, out.eps, t_low, a_low, denoise, correct=i <= self.corrections and a_t > 0)
        if t_low < t_next:  # q(x_{t_next} | x_{t_low}): x̄ gains variance s_next² - s_low²
            ratio = a_next / a_low
            x = math.sqrt(ratio) * x + self.s_noise * math.sqrt(1 - ratio) * noise()
        return x


# ----- Restart ----------------------------------------------------------------------------------------------

def restart_budget(nfe: int) -> tuple[int, int, int, int]:
    """(grid points K, Heun corrections, restart steps n, restarts k) for ``nfe`` evaluations.

    The restart block costs 2 + 2nk evaluations (a Heun step down to s_min, k times n Heun steps from s_max back
    to s_min, and the evaluation at s_min the main path resumes from); the main path gets the rest, as for EDM.
    Xu et al. 2023 spend about a third of the budget in restarts at 30+ evaluations; here n = ⌊nfe/10⌋ (at least
    1), k = 1. The smallest budget is 6: the main path needs two grid points, so that the step down to s_min does
    not start from the top of the schedule (where Heun's correction is off, see :func:`heun_corrections`).
    """
    steps, restarts = max(1, nfe // 10), 1
    points, corrections = heun_corrections(nfe - 2 - 2 * steps * restarts)
    return points, corrections, steps, restarts


class RestartStep(EDMStep):
    """Restart sampling (Xu et al. 2023, algorithm 1): the deterministic Heun path, plus a restart interval
    [s_min, s_max]. On the step that crosses s_min the path stops at s_min, then ``restarts`` times

        x̄ ← x̄ + √(s_max² - s_min²) z          forward noise to s_max: q(x_{t_max} | x_{t_min}), exact
        x̄ ← ``restart_steps`` Heun steps from s_max back down to s_min

    and the step finishes from s_min. The large forward jump contracts the accumulated error of the path (the
    paper's theorem 3) at the cost of the extra evaluations (:func:`restart_budget`). The levels are the training
    timesteps nearest s_min and s_max, moved off the loop's grid so the crossing is a single step.
    """

    def __init__(self, corrections: int, restart_steps: int = 1, restarts: int = 1, s_min: float = RESTART_S_MIN,
                 s_max: float = RESTART_S_MAX) -> None:
        super().__init__(corrections, steps=1)
        self.restart_steps, self.restarts, self.s_min, self.s_max = restart_steps, restarts, s_min, s_max
        self.levels: tuple[int, int] | None = None

    def _levels(self, process: Diffusion, alphas_cumprod: Tensor) -> tuple[int, int]:
        grid = set(process.timesteps.tolist())
        t_min = _nearest_t(alphas_cumprod, self.s_min)
        while t_min in grid and t_min + 1 < len(alphas_cumprod):
            t_min += 1
        t_max = max(_nearest_t(alphas_cumprod, self.s_max), t_min + self.restart_steps)
        return t_min, min(t_max, len(alphas_cumprod) - 1)

    def __call__(self, process: Diffusion, i: int, x: Tensor, out: ReverseStep, noise: NoiseFn,
                 denoise: Denoiser) -> Tensor:
        if self.levels is None:
            self.levels = self._levels(process, denoise.alphas_cumprod)
        t_min, t_max = self.levels
        t, a_t, t_next, a_next = _grid_alphas(process, i)
        if not t_next < t_min < t:
            return super().__call__(process, i, x, out, noise, denoise)
        ac = denoise.alphas_cumprod
        a_min, a_max = float(ac[t_min]), float(ac[t_max])
        x = self.heun(x, a_t, out.x0, out.eps, t_min, a_min, denoise, correct=a_t > 0)
        levels = torch.linspace(t_max, t_min, self.restart_steps + 1).round().long().tolist()
        for _ in range(self.restarts):
            x = math.sqrt(a_max / a_min) * x + math.sqrt(1 - a_max / a_min) * noise()  # q(x_{t_max} | x_{t_min})
            for high, low in zip(levels, levels[1:]):
                x0, eps = denoise(x, high)
                x = self.heun(x, float(ac[high]), x0, eps, low, float(ac[low]), denoise, correct=True)
        x0, eps = denoise(x, t_min)
        if i == 0:
            return x0
        return self.heun(x, a_min, x0, eps, t_next, a_next, denoise, correct=i <= self.corrections)
