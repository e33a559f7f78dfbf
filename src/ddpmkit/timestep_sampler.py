"""Which timesteps a training batch sees: uniform, importance-sampled by the loss's second moment, or log-normal in σ.

Nichol & Dhariwal 2021, eq. 17: L_vlb = E_{t∼p_t}[L_t / p_t] with p_t ∝ √E[L_t²]. The terms of the bound differ
by orders of magnitude across t (the first few dominate), so uniform t gives a very noisy estimate of L_vlb;
sampling t in proportion to the size of its term, and weighting by 1/(T p_t), keeps the estimate unbiased and
lowers its variance. Until each t has a history of ``history`` values of L_t the sampler stays uniform (the
paper: 10 per t); then a little uniform probability is mixed in so that no t is starved (improved-diffusion:
``uniform_prob = 0.001``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import DdpmkitError

HISTORY = 10          # values of L_t kept per t (Nichol & Dhariwal 2021, section 3.3)
UNIFORM_PROB = 0.001  # improved-diffusion's LossSecondMomentResampler


class UniformSampler:
    """t ∼ Uniform{0, …, T−1}; every weight is 1."""

    def __init__(self, num_steps: int):
        self.num_steps = num_steps

    def probabilities(self) -> np.ndarray:
        return np.full(self.num_steps, 1.0 / self.num_steps)

    def sample(self, batch: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t, weights): t of shape (batch,) and the weights 1/(T p_t) that keep a loss's mean unbiased."""
        p = torch.from_numpy(self.probabilities()).to(generator.device if generator is not None else "cpu")
        t = torch.multinomial(p, batch, replacement=True, generator=generator)
        weights = 1.0 / (self.num_steps * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Learn from the losses of the timesteps just trained (nothing to learn for uniform)."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "uniform", "num_steps": self.num_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self, state)


class LossSecondMomentSampler(UniformSampler):
    """p_t ∝ √(mean of the last ``history`` values of L_t²), mixed with ``uniform_prob`` of uniform."""

    def __init__(self, num_steps: int, history: int = HISTORY, uniform_prob: float = UNIFORM_PROB):
        super().__init__(num_steps)
        if history < 1 or not 0 < uniform_prob <= 1:
            raise DdpmkitError(f"history must be ≥ 1 and uniform_prob in (0, 1], got {history} and {uniform_prob}")
        self.history, self.uniform_prob = history, uniform_prob
        self.losses = np.zeros((num_steps, history), dtype=np.float64)  # ring buffer per t
        self.counts = np.zeros(num_steps, dtype=np.int64)               # values seen per t (capped at history)

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def probabilities(self) -> np.ndarray:
        if not self.warmed_up:
            return super().probabilities()
        p = np.sqrt(np.mean(self.losses**2, axis=-1))
        p /= p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.num_steps

    def update(self, t: Tensor, losses: Tensor) -> None:
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            if self.counts[step] == self.history:
                self.losses[step, :-1] = self.losses[step, 1:]
                self.losses[step, -1] = loss
            else:
                self.losses[step, self.counts[step]] = loss
                self.counts[step] += 1

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe: the histories travel in the checkpoint, so a resumed run samples t exactly as before."""
        return {"kind": "loss-second-moment", "num_steps": self.num_steps, "history": self.history,
                "uniform_prob": self.uniform_prob, "losses": self.losses.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self, state)
        if (state["history"], state["uniform_prob"]) != (self.history, self.uniform_prob):
            raise DdpmkitError("the checkpoint's timestep sampler has another history or uniform_prob")
        self.losses = np.asarray(state["losses"], dtype=np.float64).reshape(self.num_steps, self.history)
        self.counts = np.asarray(state["counts"], dtype=np.int64).reshape(self.num_steps)


class LogNormalSampler(UniformSampler):
    """EDM's training noise levels (Karras et al. 2022, Table 1): ln σ ∼ N(P_mean, P_std²), on our discrete t.

    σ_t = √((1 − ᾱ_t)/ᾱ_t) is the noise-to-signal ratio of x_t (the σ of x_t/√ᾱ_t in EDM's variance-exploding
    form). Each t takes the normal mass of ln σ between the midpoints to its neighbours' ln σ, so
    p_t = Φ((m_{t+½} − P_mean)/P_std) − Φ((m_{t−½} − P_mean)/P_std), the end steps taking the tails. EDM's
    P_mean = −1.2, P_std = 1.2 put most training on middle noise levels (σ ≈ 0.1 … 1) and little on nearly clean
    or nearly pure-noise inputs. The weights are 1: this *changes* the emphasis of the loss (as EDM does), it is
    not an importance sampler that keeps the uniform-t loss unbiased.
    """

    def __init__(self, num_steps: int, snr: np.ndarray, mean: float = -1.2, std: float = 1.2):
        super().__init__(num_steps)
        if std <= 0:
            raise DdpmkitError(f"the log-normal timestep sampler needs log_sigma_std > 0, got {std}")
        self.mean, self.std = float(mean), float(std)
        with np.errstate(divide="ignore"):  # a zero-terminal-SNR schedule has σ_T = ∞
            log_sigma = -0.5 * np.log(np.asarray(snr, dtype=np.float64))  # increasing in t
        edges = (log_sigma[1:] + log_sigma[:-1]) / 2
        cdf = np.concatenate([[0.0], _normal_cdf((edges - self.mean) / self.std), [1.0]])
        self._p = np.diff(cdf)

    def probabilities(self) -> np.ndarray:
        return self._p

    def sample(self, batch: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        t, _ = super().sample(batch, device, generator)
        return t, torch.ones(batch, device=device)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "log-normal", "num_steps": self.num_steps, "mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(self, state)
        if (state.get("mean"), state.get("std")) != (self.mean, self.std):
            raise DdpmkitError("the checkpoint's log-normal timestep sampler has another log_sigma_mean/std")


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    """Φ(z) of the standard normal (torch's ndtr, accurate in the tails), in float64."""
    return torch.special.ndtr(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()


def _check_state(sampler: UniformSampler, state: dict[str, Any]) -> None:
    kind = sampler.state_dict()["kind"]
    if state.get("kind") != kind or state.get("num_steps") != sampler.num_steps:
        raise DdpmkitError(f"the checkpoint's timestep sampler ({state.get('kind')}, T = {state.get('num_steps')}) "
                           f"is not this run's ({kind}, T = {sampler.num_steps})")


TIMESTEP_SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentSampler,
                     "log-normal": LogNormalSampler}


def make_timestep_sampler(kind: str, num_steps: int, snr: np.ndarray | None = None, log_sigma_mean: float = -1.2,
                          log_sigma_std: float = 1.2) -> UniformSampler:
    """The named sampler; ``log-normal`` needs the schedule's SNR_t (and takes EDM's P_mean, P_std)."""
    if kind not in TIMESTEP_SAMPLERS:
        raise DdpmkitError(f"unknown timestep sampler '{kind}'; choose one of {', '.join(TIMESTEP_SAMPLERS)}")
    if kind == "log-normal":
        if snr is None:
            raise DdpmkitError("the log-normal timestep sampler needs the schedule's SNR")
        return LogNormalSampler(num_steps, snr, log_sigma_mean, log_sigma_std)
    return TIMESTEP_SAMPLERS[kind](num_steps)
