"""Sampling: one loop over a respaced process; each sampler is a step rule.

    timesteps = timestep_spacing(T, K, spacing)       t_{K-1} > … > t_0, built outside any sampler
    process   = diffusion.respace(timesteps)          a K-step diffusion: ᾱ'_i = ᾱ_{t_i}, β'_i = 1 - ᾱ'_i/ᾱ'_{i-1}
    for i = K-1, …, 0:
        out = process.p_mean_variance(model(x, t_i, **model_kwargs), x, i)     x̂_0, ε̂, μ̃'_i, σ'_i²
        x   = step(process, i, x, out, noise, denoise)                         the sampler's update

The step rules (all on the respaced process, where "previous" means index i - 1 and ᾱ'_{-1} = 1):

- ``ddpm``: ancestral p(x_{i-1} | x_i) (Ho et al. 2020); over all T steps the textbook chain, on a subsequence
  the respaced chain of Nichol & Dhariwal 2021, section 4.
- ``ddim``: Song et al. 2021, eq. 12, with η ∈ [0, 1]; deterministic for η = 0.
- ``dpm++2m``: DPM-Solver++(2M) (Lu et al. 2022), second-order multistep in x̂_0 space.
- ``dpm++3m``: its third-order multistep sibling.
- ``unipc``: UniPC (Zhao et al. 2023), a second-order predictor with its corrector (third order, same cost).
- ``dpm++2m-sde``, ``heun``, ``edm``, ``restart``: DPM-Solver++(2M) SDE, EDM's Heun sampler without and with
  stochastic churn (Karras et al. 2022), Restart sampling (Xu et al. 2023); see :mod:`ddpmkit.stochastic_samplers`.

``steps`` counts model evaluations (NFE) for every sampler: a Heun step costs two, so ``heun`` with 10 steps walks
a grid of 6 timesteps (:attr:`SamplerSettings.grid_size`), and a rule that evaluates the model again calls
``denoise(x, t)`` at any training timestep.

After every step ``callback`` receives one :class:`SamplerStep` record (i, t, x, x̂_0, ε̂, …): new fields can be
added without breaking callers. Conditioning travels as ``model_kwargs`` (improved-diffusion's name): labels,
a cross-attention context, anything the model's forward takes by keyword.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .device import randn
from .diffusion import Diffusion, ReverseStep
from .errors import DdpmkitError
from .stochastic_samplers import (
    EDM_CHURN,
    Denoiser,
    DPMSolver2MSDEStep,
    EDMStep,
    RestartStep,
    half_log_snr,
    heun_corrections,
    restart_budget,
)

ModelFn = Callable[[Tensor, Tensor], Tensor]
NoiseFn = Callable[[], Tensor]

SPACINGS = ("leading", "trailing", "linspace", "logsnr", "karras")
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5: ρ = 7
NULL_LABEL = -1  # the "no class" label of classifier-free guidance; a class-conditional UNet maps it to its null class


@dataclass(frozen=True)
class SamplerSettings:
    """A checked sampler configuration: name, number of steps, spacing and η."""

    sampler: str
    steps: int
    spacing: str
    eta: float

    @property
    def grid_size(self) -> int:
        """How many timesteps the loop walks: ``steps`` model evaluations buy this many (fewer for Heun-type rules)."""
        return SAMPLER_REGISTRY[self.sampler].grid_size(self.steps)

    def timesteps(self, num_train_steps: int, alphas_cumprod: Tensor | None = None) -> Tensor:
        return timestep_spacing(num_train_steps, self.grid_size, self.spacing, alphas_cumprod)

    def make_step(self) -> Callable[..., Tensor]:
        """A fresh step rule for one run."""
        return SAMPLER_REGISTRY[self.sampler].make_step(self)


def check_sampler_args(sampler: str, steps: int | None, eta: float, num_train_steps: int,
                       spacing: str | None = None) -> SamplerSettings:
    """The one place sampler arguments are validated; fills in the sampler's defaults.

    A default step count larger than T is cut to T; an explicit one must lie in 1..T.
    """
    if sampler not in SAMPLER_REGISTRY:
        raise DdpmkitError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    defaults = SAMPLER_REGISTRY[sampler]
    if steps is None:
        steps = num_train_steps if defaults.steps is None else min(defaults.steps, num_train_steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_steps:
        raise DdpmkitError(f"steps must be between 1 and {num_train_steps} (the model's T), got {steps}")
    if steps < defaults.min_steps:
        raise DdpmkitError(f"{sampler} needs at least {defaults.min_steps} model evaluations (steps), got {steps}; "
                           f"ask for more steps or another sampler")
    if not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise DdpmkitError(f"eta must be in [0, 1], got {eta}")
    spacing = spacing or defaults.spacing
    if spacing not in SPACINGS:
        raise DdpmkitError(f"unknown timestep spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
    return SamplerSettings(sampler, steps, spacing, float(eta) if defaults.uses_eta else 0.0)


def timestep_spacing(num_train_steps: int, steps: int, spacing: str = "trailing",
                     alphas_cumprod: Tensor | None = None) -> Tensor:
    """A descending subsequence of ``steps`` training timesteps in [0, T-1].

    leading (DDIM paper, diffusers' default): t_i = i · ⌊T/steps⌋, so the largest is T - ⌊T/steps⌋.
    trailing (Lin et al. 2024, table 2): t_i = round(T - i · T/steps) - 1, so sampling starts at T-1.
    linspace: round(linspace(0, T-1, steps)).
    logsnr (DPM-Solver's time-uniform-in-λ steps): the t nearest to λ evenly spaced from λ_{T-1} to λ_0,
        λ_t = ½ log(ᾱ_t / (1 - ᾱ_t)).
    karras (Karras et al. 2022, eq. 5): the t nearest in log σ to σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} -
        σ_max^{1/ρ}))^ρ, σ_t = √((1 - ᾱ_t)/ᾱ_t), ρ = 7: small steps near the data.
    The last two need the schedule's ``alphas_cumprod``; both start at T-1 and end at 0.
    """
    if not 1 <= steps <= num_train_steps:
        raise DdpmkitError(f"steps must be between 1 and {num_train_steps}, got {steps}")
    if spacing in ("logsnr", "karras"):
        if alphas_cumprod is None or len(alphas_cumprod) != num_train_steps:
            raise DdpmkitError(f"{spacing} spacing needs the schedule's alphas_cumprod (T = {num_train_steps})")
        ts = _snr_spacing(alphas_cumprod.double(), steps, spacing)
    elif spacing == "leading":
        ts = torch.arange(steps) * (num_train_steps // steps)
    elif spacing == "trailing":
        ts = torch.round(torch.arange(num_train_steps, 0, -num_train_steps / steps, dtype=torch.float64))[:steps] - 1
    elif spacing == "linspace":
        ts = torch.linspace(0, num_train_steps - 1, steps, dtype=torch.float64).round()
    else:
        raise DdpmkitError(f"unknown timestep spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
    ts = ts.long().unique()
    if len(ts) != steps:
        raise DdpmkitError(f"{spacing} spacing gives repeated timesteps for {steps} of {num_train_steps} steps")
    return ts.flip(0)


def _snr_spacing(alphas_cumprod: Tensor, steps: int, spacing: str) -> Tensor:
    """Nearest timesteps to targets evenly spaced in λ (logsnr) or in σ^{1/ρ} (karras), in log σ = -λ."""
    ac = alphas_cumprod.clamp(min=1e-300)  # ᾱ_T = 0 (zero terminal SNR): the largest finite λ stands in
    log_sigma = 0.5 * (torch.log1p(-ac) - torch.log(ac))  # = -λ_t, increasing in t
    if steps == 1:
        return torch.tensor([len(ac) - 1], dtype=torch.float64)
    lo, hi = log_sigma[0], log_sigma[-1]
    if spacing == "logsnr":
        targets = torch.linspace(float(hi), float(lo), steps, dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        s_max, s_min = hi.exp() ** (1 / KARRAS_RHO), lo.exp() ** (1 / KARRAS_RHO)
        targets = torch.log((s_max + ramp * (s_min - s_max)) ** KARRAS_RHO)
    ts = (log_sigma[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
    # Where λ changes fast between neighbouring t (cosine near T) targets share a nearest t: make the sequence
    # strictly decreasing from T-1 to 0 by moving each as little as that needs.
    ts[0] = len(ac) - 1
    for k in range(1, steps):
        ts[k] = min(ts[k], ts[k - 1] - 1)
    ts[-1] = 0
    for k in range(steps - 2, -1, -1):
        ts[k] = max(ts[k], ts[k + 1] + 1)
    return torch.tensor(ts, dtype=torch.float64)


# ----- the step rules ---------------------------------------------------------------------------------------

class DDPMStep:
    """x_{i-1} = μ̃'_i(x̂_0, x_i) + σ'_i z, z ~ N(0, I), no noise at the last step.

    σ'_i² is β̃'_i (fixed_small) or β'_i (fixed_large) of the (respaced) process: ``out`` already holds both.
    """

    def __call__(self, process: Diffusion, i: int, x: Tensor, out: ReverseStep, noise: NoiseFn,
                 denoise: Denoiser | None = None) -> Tensor:
        if i == 0:
            return out.mean
        return out.mean + torch.exp(0.5 * out.log_variance) * noise()


class DDIMStep:
    """DDIM (Song et al. 2021, eq. 12) from index i to i - 1 of the (respaced) process:

        x_{i-1} = √ᾱ_{i-1} x̂_0 + √(1 - ᾱ_{i-1} - σ²) ε̂ + σ z,   σ = η √((1-ᾱ_{i-1})/(1-ᾱ_i)) √(1 - ᾱ_i/ᾱ_{i-1}),

    with ᾱ_{-1} = 1 after the last step. η = 0 is deterministic; η = 1 over all T steps is DDPM with β̃_t.
    """

    def __init__(self, eta: float = 0.0):
        self.eta = eta

    def __call__(self, process: Diffusion, i: int, x: Tensor, out: ReverseStep, noise: NoiseFn,
                 denoise: Denoiser | None = None) -> Tensor:
        a_t, a_prev = float(process.schedule.alphas_cumprod[i]), float(process.schedule.alphas_cumprod_prev[i])
        sigma = self.eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t)) * math.sqrt(max(0.0, 1.0 - a_t / a_prev))
        x = math.sqrt(a_prev) * out.x0 + math.sqrt(max(0.0, 1.0 - a_prev - sigma**2)) * out.eps
        return x + sigma * noise() if sigma > 0 else x


class DPMSolver2MStep:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) with α = √ᾱ, σ = √(1-ᾱ), λ = log(α/σ), h = λ_{i-1} - λ_i:

        D_i = x̂_0 (first step) or (1 + 1/(2r)) x̂_0,i - 1/(2r) x̂_0,i+1,   r = h_prev / h
        x_{i-1} = (σ_{i-1}/σ_i) x_i - α_{i-1} (e^{-h} - 1) D_i.

    The last step jumps to the clean image x̂_0 (σ = 0), as k-diffusion does. Deterministic. One instance per run:
    it remembers the previous x̂_0 and h.
    """

    def __init__(self) -> None:
        self.x0_prev: Tensor | None = None
        self.h_prev: float | None = None

    def __call__(self, process: Diffusion, i: int, x: Tensor, out: ReverseStep, noise: NoiseFn,
                 denoise: Denoiser | None = None) -> Tensor:
        if i == 0:
            return out.x0
        a_t, a_s = float(process.schedule.alphas_cumprod[i]), float(process.schedule.alphas_cumprod_prev[i])
        h = half_log_snr(a_s) - half_log_snr(a_t)
        if self.x0_prev is None:
            d = out.x0
        else:
            r = self.h_prev / h
            d = (1 + 1 / (2 * r)) * out.x0 - (1 / (2 * r)) * self.x0_prev
        self.x0_prev, self.h_prev = out.x0, h
        return (math.sqrt(1 - a_s) / math.sqrt(1 - a_t)) * x - math.sqrt(a_s) * math.expm1(-h) * d  # h=∞: σ_s x+α_s D


class DPMSolver3MStep(DPMSolver2MStep):
    """DPM-Solver++(3M) (Lu et al. 2022, the multistep third-order solver; k-diffusion's ``dpmpp_3m_sde`` with
    η = 0), in VP form: with D_j the x̂_0 of the last three steps and h_j their λ-steps (h the current one),

        x_{i-1} = (σ_{i-1}/σ_i) x_i + α_{i-1} [ (1 - e^{-h}) D_i + φ₂ d₁ - φ₃ d₂ ],
        r₀ = h_1/h, r₁ = h_2/h,  d₁,₀ = (D_i - D_{i+1})/r₀,  d₁,₁ = (D_{i+1} - D_{i+2})/r₁,
        d₁ = d₁,₀ + (d₁,₀ - d₁,₁) r₀/(r₀ + r₁),  d₂ = (d₁,₀ - d₁,₁)/(r₀ + r₁),
        φ₂ = (e^{-h} - 1)/h + 1,  φ₃ = φ₂/h - ½;

    the first step is first order, the second second order (d₂ = 0, d₁ = d₁,₀), the last jumps to x̂_0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[Tensor, float]] = []  # (x̂_0, h) of earlier steps, newest first

    def __call__(self, process: Diffusion, i: int, x: Tensor, out: ReverseStep, noise: NoiseFn,
                 denoise: Denoiser | None = None) -> Tensor:
        if i == 0:
            return out.x0
        a_t, a_s = float(process.schedule.alphas_cumprod[i]), float(process.schedule.alphas_cumprod_prev[i])
        h = half_log_snr(a_s) - half_log_snr(a_t)
        x_next = (math.sqrt(1 - a_s) / math.sqrt(1 - a_t)) * x - math.sqrt(a_s) * math.expm1(-h) * out.x0
        if self.history and math.isfinite(h):
            phi_2 = math.expm1(-h) / h + 1
            (d_1, h_1), *older = self.history
            r0 = h_1 / h
            d1_0 = (out.x0 - d_1) / r0
            if older:
                d_2, r1 = older[0][0], older[0][1] / h
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x_next = x_next + math.sqrt(a_s) * (phi_2 * d1 - (phi_2 / h - 0.5) * d2)
            else:
                x_next = x_next + math.sqrt(a_s) * phi_2 * d1_0
        self.history = [(out.x0, h), *self.history[:1]]
        return x_next


class UniPCStep:
    """UniPC (Zhao et al. 2023) in x̂_0 form with B(h) = e^{-h} - 1 ("bh2", diffusers' default), order p.

    With λ = log(α/σ), the current index s, the next t, h = λ_t - λ_s, and the x̂_0 of earlier steps k at
    r_k = (λ_k - λ_s)/h (negative), D_k = (x̂_0,k - x̂_0,s)/r_k:

        predictor UniP-p:  x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂_0,s - α_t B(h) Σ_k a_k D_k      (p - 1 terms)
        corrector UniC-p:  x_s ← the same map from the step before, with Σ_k c_k D_k + c_p (x̂_0,t - x̂_0,s),
                           where x̂_0,t is the model at the uncorrected point (the evaluation the step needs anyway)

    a solves the first p - 1 rows of R a = b (a = ½ when p = 2) and c all p rows (c = ½ when p = 1), with
    R_ik = r_k^(i-1) (r_p = 1) and b_i = i! (-h) φ_{i+1}(-h) / B(h), φ_1(z) = (e^z - 1)/z,
    φ_{k+1}(z) = (φ_k(z) - 1/k!)/z (UniPC, algorithms 1-2 and appendix; diffusers' ``multistep_uni_p/c_bh_update``).
    UniPC-p costs what DPM-Solver++(pM) costs and gains one order of accuracy from the corrector. It warms up at
    lower order, lowers the order to the steps left near the end (diffusers' ``lower_order_final``), and the last
    step returns the model's x̂_0 (σ = 0), uncorrected, as diffusers' does. One instance per run.
    """

    def __init__(self, order: int = 2) -> None:
        if order not in (1, 2, 3):
            raise DdpmkitError(f"UniPC order must be 1, 2 or 3, got {order}")
        self.order = order
        self.history: list[tuple[Tensor, float]] = []  # (x̂_0, ᾱ) of the steps so far, newest first
        self.last: tuple[Tensor, float, int] | None = None  # the last step's (corrected) start x, its ᾱ, its order

    @staticmethod
    def _b(h: float, rows: int) -> tuple[list[float], float]:
        """b_1..b_rows and B(h) = e^{-h} - 1."""
        hh = -h
        b_h = math.expm1(hh)
        h_phi, factorial, b = math.expm1(hh) / hh - 1, 1, []  # h_phi = hh φ_{i+1}(hh), from i = 1
        for i in range(1, rows + 1):
            b.append(h_phi * factorial / b_h)
            factorial *= i + 1
            h_phi = h_phi / hh - 1 / factorial
        return b, b_h

    def _update(self, x: Tensor, a_s: float, a_t: float, x0_s: Tensor, earlier: list[tuple[Tensor, float]],
                x0_t: Tensor | None = None) -> Tensor:
        """UniP (``x0_t`` None) or UniC from (x, ᾱ_s) to ᾱ_t; ``earlier``: the (x̂_0, ᾱ) before x0_s, newest first."""
        lam_s, lam_t = half_log_snr(a_s), half_log_snr(a_t)
        h = lam_t - lam_s
        x_t = math.sqrt((1 - a_t) / (1 - a_s)) * x - math.sqrt(a_t) * math.expm1(-h) * x0_s
        rks = [(half_log_snr(a_k) - lam_s) / h for _, a_k in earlier]
        diffs = [(x0_k - x0_s) / r for (x0_k, _), r in zip(earlier, rks)]
        rows = len(rks) + 1
        b, b_h = self._b(h, rows)
        R = torch.tensor([[r ** (i - 1) for r in [*rks, 1.0]] for i in range(1, rows + 1)], dtype=torch.float64)
        b = torch.tensor(b, dtype=torch.float64)
        if x0_t is None:
            if not diffs:
                return x_t  # first order: DDIM
            rhos = [0.5] if rows == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            return x_t - math.sqrt(a_t) * b_h * sum(rho * d for rho, d in zip(rhos, diffs))
        rhos = [0.5] if rows == 1 else torch.linalg.solve(R, b).tolist()
        correction = sum((rho * d for rho, d in zip(rhos[:-1], diffs)), torch.zeros_like(x))
        return x_t - math.sqrt(a_t) * b_h * (correction + rhos[-1] * (x0_t - x0_s))

    def _earlier(self) -> list[tuple[Tensor, float]]:
        """The x̂_0 before the newest, where λ is finite (a step from SNR 0 has no place in the fit)."""
        return [entry for entry in self.history[1:] if 0.0 < entry[1] < 1.0]

    def __call__(self, process: Diffusion, i: int, x: Tensor, out: ReverseStep, noise: NoiseFn,
                 denoise: Denoiser | None = None) -> Tensor:
        if i == 0:
            return out.x0
        a_t, a_next = float(process.schedule.alphas_cumprod[i]), float(process.schedule.alphas_cumprod_prev[i])
        if self.last is not None:  # UniC: redo the last step with the model's x̂_0 at its end
            x_prev, a_prev, order = self.last
            x = self._update(x_prev, a_prev, a_t, self.history[0][0], self._earlier()[:order - 1], out.x0)
        self.history = [(out.x0, a_t), *self.history][:self.order]
        if a_t <= 0.0:  # from SNR 0 the first step is DDIM's, x = √ᾱ_next x̂_0 + √(1 - ᾱ_next) ε̂; no corrector after
            return math.sqrt(a_next) * out.x0 + math.sqrt(1 - a_next) * out.eps
        order = min(self.order, 1 + len(self._earlier()), i + 1)  # warm-up; near the end the i + 1 steps left
        self.last = (x, a_t, order)
        return self._update(x, a_t, a_next, out.x0, self._earlier()[:order - 1])


def _one_evaluation_per_step(nfe: int) -> int:
    return nfe


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: its step rule (a fresh one for each run, from the checked settings) and what it does when the
    caller does not say: its step count (None: all T) and timestep spacing; ``uses_eta`` says whether η means
    anything to it, and ``multistep`` whether its step rule remembers earlier steps (so that a path that jumps back,
    as RePaint's, is not one it can follow). ``steps`` always counts model evaluations; ``grid_size`` says how many
    timesteps of the loop's grid that buys (the same number for one evaluation per step), ``min_steps`` the
    smallest budget the rule can spend."""

    make_step: Callable[[SamplerSettings], Callable[..., Tensor]]
    steps: int | None
    spacing: str
    uses_eta: bool = False
    multistep: bool = False
    grid_size: Callable[[int], int] = _one_evaluation_per_step
    min_steps: int = 1


# The one sampler registry: Python (sample, Pipeline, SampleRequest), the CLI and the demo all read it.
SAMPLER_REGISTRY: dict[str, SamplerSpec] = {
    # the full chain; respaced as improved-diffusion does
    "ddpm": SamplerSpec(lambda s: DDPMStep(), steps=None, spacing="linspace"),
    # Lin et al. 2024: trailing starts at T-1
    "ddim": SamplerSpec(lambda s: DDIMStep(s.eta), steps=50, spacing="trailing", uses_eta=True),
    # Lu et al. 2022: 15-20 steps for good samples; trailing, measured: on the cosine mnist run λ-uniform steps
    # crowd near T (classifier FID at 10 NFE 864 vs 748)
    "dpm++2m": SamplerSpec(lambda s: DPMSolver2MStep(), steps=20, spacing="trailing", multistep=True),
    "dpm++3m": SamplerSpec(lambda s: DPMSolver3MStep(), steps=20, spacing="trailing", multistep=True),
    # UniPC-2 (Zhao et al. 2023), measured on the mnist default job (Inception FID, N = 500): 38.4 at 10 steps
    # against DDIM-50's 36.6 (DPM-Solver++(2M)-10 45.8); order 3 gave the same (38.3), so only order 2 is named
    "unipc": SamplerSpec(lambda s: UniPCStep(order=2), steps=10, spacing="trailing",
                         multistep=True),
    # the stochastic few-step samplers; ``steps`` counts model evaluations for each
    "dpm++2m-sde": SamplerSpec(lambda s: DPMSolver2MSDEStep(), steps=20, spacing="trailing", multistep=True),
    "heun": SamplerSpec(lambda s: EDMStep(heun_corrections(s.steps)[1], s.grid_size), steps=19, spacing="trailing",
                        grid_size=lambda nfe: heun_corrections(nfe)[0]),
    "edm": SamplerSpec(lambda s: EDMStep(heun_corrections(s.steps)[1], s.grid_size, churn=EDM_CHURN), steps=19,
                       spacing="trailing", grid_size=lambda nfe: heun_corrections(nfe)[0]),
    "restart": SamplerSpec(lambda s: RestartStep(*restart_budget(s.steps)[1:]), steps=20, spacing="trailing",
                           grid_size=lambda nfe: restart_budget(nfe)[0], min_steps=6),
}
SAMPLERS = tuple(SAMPLER_REGISTRY)


def make_step(sampler: str, eta: float = 0.0, steps: int | None = None,
              num_train_steps: int = 1000) -> Callable[..., Tensor]:
    """A fresh step rule for one sampling run of ``steps`` model evaluations, from the registry."""
    return check_sampler_args(sampler, steps, eta, num_train_steps).make_step()


# ----- the loop -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerStep:
    """What a callback receives after each step (fields may be added; read them by name)."""

    i: int          # 0, 1, …, num_steps - 1 in sampling order
    num_steps: int  # K, the length of the run
    t: int          # the training timestep the model was called with
    x: Tensor       # the sample after this step (x_{i-1})
    x0: Tensor      # the step's x̂_0
    eps: Tensor     # the step's ε̂
    x_t: Tensor     # the sample the model saw


Callback = Callable[[SamplerStep], None]


def _batch_index(value: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), int(value), dtype=torch.long, device=x.device)


class ModelDenoiser:
    """The model at any training timestep t of ``diffusion``: (x̂_0, ε̂) = ``diffusion.denoise(model(x, t), x, t)``,
    with the run's clipping. ``evaluations`` counts the calls a step rule made."""

    def __init__(self, model_fn: ModelFn, diffusion: Diffusion, clip_denoised: bool | None = None,
                 dynamic_threshold: float | None = None):
        self.model_fn, self.diffusion = model_fn, diffusion
        self.clip_denoised, self.dynamic_threshold = clip_denoised, dynamic_threshold
        self.alphas_cumprod = diffusion.schedule.alphas_cumprod.to("cpu", torch.float64)
        self.evaluations = 0

    def __call__(self, x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        self.evaluations += 1
        t_batch = _batch_index(t, x)
        return self.diffusion.denoise(self.model_fn(x, t_batch), x, t_batch, self.clip_denoised,
                                      self.dynamic_threshold)


@torch.inference_mode()
def sample_loop(
    model_fn: ModelFn,
    diffusion: Diffusion,
    x: Tensor,
    timesteps: Sequence[int] | Tensor,
    step: Callable[..., Tensor],
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_denoised: bool | None = None,
    dynamic_threshold: float | None = None,
) -> Tensor:
    """Walk ``timesteps`` (any subset of 0..T-1) from x = x_T with one step rule; returns x_0.

    The loop evaluates the model once at every grid point; a step rule that needs more (Heun, Restart) calls the
    :class:`ModelDenoiser` it is given, at any training timestep.
    """
    process = diffusion.respace(timesteps)
    noise = lambda: randn(x.shape, generator, x.device, x.dtype)
    denoise = ModelDenoiser(model_fn, diffusion, clip_denoised, dynamic_threshold)
    K = process.num_steps
    for n, i in enumerate(range(K - 1, -1, -1)):
        t = int(process.timesteps[i])
        out = process.p_mean_variance(model_fn(x, _batch_index(t, x)), x, _batch_index(i, x), clip_denoised,
                                      dynamic_threshold)
        x_next = step(process, i, x, out, noise, denoise)
        if callback is not None:
            callback(SamplerStep(n, K, t, x_next, out.x0, out.eps, x))
        x = x_next
    return x


# ----- conditioning and guidance --------------------------------------------------------------------------

def null_condition(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The unconditional counterpart of a condition, derived from the condition itself.

    Labels become :data:`NULL_LABEL` (the model maps it to its learned null class). Other conditions have no
    implied null: pass ``uncond_kwargs`` to :func:`guided_model_fn` for them.
    """
    null = {}
    for key, value in model_kwargs.items():
        if key != "labels" or not isinstance(value, Tensor):
            raise DdpmkitError(f"guidance does not know the null of condition '{key}'; pass uncond_kwargs")
        null[key] = torch.full_like(value, NULL_LABEL)
    return null


def guided_model_fn(model: Callable[..., Tensor], model_kwargs: Mapping[str, Any], guidance: float,
                    uncond_kwargs: Mapping[str, Any] | None = None) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): ε̂ = ε̂_∅ + w (ε̂_c − ε̂_∅), both passes in one batch of 2B.

    w = 0 is the unconditional model, w = 1 the conditional one, w > 1 pushes samples toward their class.

    In which space: the combination is made on whatever the model outputs (ε, x₀ or v), and that is the same
    guidance in every parameterisation. Given x_t and t, each output is an affine function of the others with
    coefficients that depend only on (x_t, t): ε = (x_t − √ᾱ_t x₀)/√(1 − ᾱ_t) and v = √ᾱ_t ε − √(1 − ᾱ_t) x₀. The
    guided combination (1 − w)·a_∅ + w·a_c has weights that sum to 1, and such a combination commutes with any
    affine map f: f((1 − w) a_∅ + w a_c) = (1 − w) f(a_∅) + w f(a_c). So guiding x₀ or v and converting to ε gives
    exactly the ε-space guidance of the paper (the score-space one: ε is −√(1 − ᾱ_t) × the score), with no
    conversion in the loop. A learned-variance output (channels after the first C) keeps the conditional
    variance: guidance is defined on the mean, and the variance the model learned for this class is kept.
    (:func:`conditioned_model_fn` runs w = 0 as the unconditional model alone, variance included: one pass.)
    """
    uncond = dict(null_condition(model_kwargs) if uncond_kwargs is None else uncond_kwargs)
    if set(uncond) != set(model_kwargs):
        raise DdpmkitError("uncond_kwargs must have the same keys as model_kwargs")
    both_kwargs = {k: torch.cat([model_kwargs[k], uncond[k]]) for k in model_kwargs}

    def fn(x: Tensor, t: Tensor) -> Tensor:
        cond, free = model(torch.cat([x, x]), torch.cat([t, t]), **both_kwargs).chunk(2)
        c = x.shape[1]
        guided = free[:, :c] + guidance * (cond[:, :c] - free[:, :c])
        return torch.cat([guided, cond[:, c:]], dim=1) if cond.shape[1] > c else guided

    return fn


def conditioned_model_fn(model: Callable[..., Tensor], model_kwargs: Mapping[str, Any] | None = None,
                         guidance: float | None = None, uncond_kwargs: Mapping[str, Any] | None = None,
                         device: torch.device | None = None,
                         autocast_dtype: torch.dtype | None = None) -> ModelFn:
    """``model_fn(x, t)`` for the loop: the model with its condition, guidance, and autocast applied."""
    kwargs = {k: (v.to(device) if isinstance(v, Tensor) and device is not None else v)
              for k, v in (model_kwargs or {}).items()}
    if uncond_kwargs is not None:  # the unconditional input goes to the device as the conditional one does
        uncond_kwargs = {k: (v.to(device) if isinstance(v, Tensor) and device is not None else v)
                         for k, v in uncond_kwargs.items()}
    if guidance is not None and guidance != 1.0:
        if not kwargs:
            raise DdpmkitError("guidance needs a condition (e.g. labels); the model was given none")
        if guidance == 0.0:  # ε̂_∅ + 0·(ε̂_c − ε̂_∅) is the unconditional model, variance included: one pass, exactly
            null = dict(null_condition(kwargs) if uncond_kwargs is None else uncond_kwargs)
            base = lambda x, t: model(x, t, **null)
        else:
            base = guided_model_fn(model, kwargs, guidance, uncond_kwargs)
    else:
        base = lambda x, t: model(x, t, **kwargs)
    if autocast_dtype is None:
        return base

    def fn(x: Tensor, t: Tensor) -> Tensor:
        # no cast cache: it would hold weight copies made inside a CUDA graph's capture (PyTorch's CUDA-graph notes)
        with torch.autocast(device_type=x.device.type, dtype=autocast_dtype, cache_enabled=False):
            return base(x, t)

    return fn


class CUDAGraphModelFn:
    """``model_fn(x, t)`` replayed from a CUDA graph: the UNet's hundreds of kernel launches recorded once per
    input shape and replayed with one launch per step (NVIDIA's CUDA Graphs; ``torch.cuda.CUDAGraph``).

    A sampling step calls the same network on tensors of the same shape every time, and on a GPU a UNet forward
    at small batch is bound by the host launching kernels, not by the GPU running them. The graph is captured on
    the first call of each (x shape, t shape) after warm-up calls on a side stream; every call then copies its
    inputs into the captured buffers, replays, and returns a copy of the output. The weights and the condition
    (labels, guidance) are fixed by the wrapped function, as they are within one ``sample`` call.
    """

    def __init__(self, model_fn: ModelFn, warmup: int = 2):
        self.model_fn, self.warmup = model_fn, warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = {}

    def _capture(self, x: Tensor, t: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]:
        static_x, static_t = x.clone(), t.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up outside the graph: cuDNN autotuning, lazy initialisation
            for _ in range(self.warmup):
                self.model_fn(static_x, static_t)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model_fn(static_x, static_t)
        return graph, static_x, static_t, static_out

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, t)
        graph, static_x, static_t, static_out = self.graphs[key]
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        return static_out.clone()


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout and label dropout off while sampling; the previous mode is restored afterwards."""
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def model_device(model: Any, device: torch.device | str | None = None, x: Tensor | None = None) -> torch.device:
    """The device to sample on: the argument, else x's, else the model's first parameter's, else the CPU."""
    if device is not None:
        return torch.device(device)
    if x is not None:
        return x.device
    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def sample(
    model: Callable[..., Tensor],
    diffusion: Diffusion,
    shape: Sequence[int],
    sampler: str = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    spacing: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    guidance: float | None = None,
    uncond_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_denoised: bool | None = None,
    dynamic_threshold: float | None = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    cuda_graph: bool = False,
) -> Tensor:
    """Generate a batch: x_T ~ N(0, I) of ``shape`` (from ``generator``), then run ``sampler``.

    ``model(x, t, **model_kwargs)`` is any callable (a UNet, a wrapper, an analytic model); ``model_kwargs``
    carries the condition, e.g. ``{"labels": y}``. ``guidance`` ≠ 1 enables classifier-free guidance. Steps
    default per sampler (:data:`SAMPLER_REGISTRY`). ``autocast_dtype`` (e.g. torch.bfloat16) runs the model
    under autocast while the sampler's arithmetic stays in float32. ``clip_denoised`` (x̂_0 clipped to [-1, 1] at
    every step) defaults to the diffusion's own setting. ``cuda_graph`` (CUDA only) replays the model from a CUDA
    graph (:class:`CUDAGraphModelFn`). Returns float32 images, nominally in [-1, 1] (float64 for a float64 ``x_T``:
    the tests against closed forms sample in double precision).
    """
    settings = check_sampler_args(sampler, steps, eta, diffusion.num_steps, spacing)
    device = model_device(model, device, x_T)
    if x_T is None:
        x_T = randn(shape, generator, device)
    x = x_T.to(device, torch.float64 if x_T.dtype == torch.float64 else torch.float32)
    model_fn = conditioned_model_fn(model, model_kwargs, guidance, uncond_kwargs, device, autocast_dtype)
    if cuda_graph:
        if device.type != "cuda":
            raise DdpmkitError(f"cuda_graph=True needs a CUDA device, not {device}")
        model_fn = CUDAGraphModelFn(model_fn)
    timesteps = settings.timesteps(diffusion.num_steps, diffusion.schedule.alphas_cumprod)
    with eval_mode(model):
        return sample_loop(model_fn, diffusion, x, timesteps, settings.make_step(), generator=generator,
                           callback=callback, clip_denoised=clip_denoised, dynamic_threshold=dynamic_threshold)
