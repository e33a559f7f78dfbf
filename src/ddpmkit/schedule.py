"""Noise schedules: the β_t of the forward process and everything derived from them.

The forward process adds Gaussian noise in T steps,

    q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I),

which composes into the closed form q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I) with α_t = 1-β_t and ᾱ_t = ∏_{s≤t} α_s.
Every derived quantity is computed once, in float64, and cast to the caller's dtype only when used.
Indices are 0-based: t = 0 is the first noising step, t = T-1 the last (pure noise for a good schedule).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .errors import DdpmkitError

SCHEDULE_KINDS = ("linear", "cosine", "sigmoid")


class NoiseSchedule:
    """β_1..β_T and the quantities the diffusion math needs (all float64 tensors of shape (T,)).

    Attributes:
        betas: β_t.
        alphas: α_t = 1 - β_t.
        alphas_cumprod: ᾱ_t = ∏_{s≤t} α_s.
        alphas_cumprod_prev: ᾱ_{t-1}, with ᾱ_{-1} = 1.
        sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod: √ᾱ_t and √(1-ᾱ_t).
        posterior_variance: β̃_t = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t), the variance of q(x_{t-1} | x_t, x_0).
        posterior_log_variance_clipped: log β̃_t with β̃_0 (= 0) replaced by β̃_1, as in DDPM's code.
        posterior_mean_coef1, posterior_mean_coef2: μ̃_t = coef1 · x_0 + coef2 · x_t, with
            coef1 = β_t √ᾱ_{t-1} / (1-ᾱ_t) and coef2 = (1-ᾱ_{t-1}) √α_t / (1-ᾱ_t).
        snr: signal-to-noise ratio ᾱ_t / (1-ᾱ_t).
    """

    def __init__(self, betas: Tensor | list[float], kind: str = "custom", params: dict[str, Any] | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 1:
            raise DdpmkitError("a noise schedule needs at least one step; pass num_steps >= 1")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise DdpmkitError("every beta must lie in (0, 1]; check beta_start/beta_end")
        self.kind = kind
        self.params = dict(params or {})
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._derive()

    def _derive(self) -> None:
        """Everything that follows from ᾱ_t (called again after a rescale changes ᾱ)."""
        ac = self.alphas_cumprod
        self.alphas_cumprod_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.snr = ac / (1.0 - ac)
        one_minus = 1.0 - ac
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        # DDPM (Ho et al. 2020, diffusion_utils_2.py): log-variance clipped because β̃_0 = 0.
        first = self.posterior_variance[1] if len(ac) > 1 else self.betas[0]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first.reshape(1), self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = self.betas * self.alphas_cumprod_prev.sqrt() / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / one_minus

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps."""
        return len(self.betas)

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"NoiseSchedule({self.kind}, T={self.num_steps}{', ' + extra if extra else ''})"

    # ----- constructors -------------------------------------------------------------------------------------

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """β_t evenly spaced from beta_start to beta_end (Ho et al. 2020 use 1e-4 … 0.02 over T = 1000)."""
        _check_steps(num_steps)
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        return cls(betas, "linear", {"beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal 2021, eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2).

        β_t = 1 - ᾱ_t/ᾱ_{t-1}, clipped at max_beta = 0.999 to avoid the singularity near t = T.
        """
        _check_steps(num_steps)

        def f(t: Tensor) -> Tensor:
            return torch.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2

        t = torch.arange(num_steps + 1, dtype=torch.float64)
        alphas_cumprod = f(t) / f(t[:1])
        betas = (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)
        return cls(betas, "cosine", {"s": s, "max_beta": max_beta})

    @classmethod
    def sigmoid(
        cls,
        num_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        start: float = -6.0,
        end: float = 6.0,
    ) -> NoiseSchedule:
        """β = sigmoid(linspace(start, end, T)) rescaled linearly into [beta_start, beta_end] (as in diffusers)."""
        _check_steps(num_steps)
        sig = torch.sigmoid(torch.linspace(start, end, num_steps, dtype=torch.float64))
        if num_steps > 1:
            sig = (sig - sig.min()) / (sig.max() - sig.min())
        betas = sig * (beta_end - beta_start) + beta_start
        return cls(betas, "sigmoid", {"beta_start": beta_start, "beta_end": beta_end, "start": start, "end": end})

    @classmethod
    def from_name(cls, kind: str, num_steps: int = 1000, **params: Any) -> NoiseSchedule:
        """Build a schedule by name ("linear", "cosine", "sigmoid"); ``zero_terminal_snr=True`` rescales it."""
        zero_snr = bool(params.pop("zero_terminal_snr", False))
        makers = {"linear": cls.linear, "cosine": cls.cosine, "sigmoid": cls.sigmoid}
        if kind not in makers:
            raise DdpmkitError(f"unknown noise schedule '{kind}'; choose one of {', '.join(SCHEDULE_KINDS)}")
        try:
            schedule = makers[kind](num_steps, **params)
        except TypeError as exc:
            raise DdpmkitError(f"bad parameters for the {kind} schedule: {exc}") from exc
        return schedule.rescale_zero_terminal_snr() if zero_snr else schedule

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description that :meth:`from_dict` turns back into the same schedule."""
        if self.kind == "custom":
            return {"kind": "custom", "betas": self.betas.tolist()}
        params = {k: v for k, v in self.params.items() if k != "zero_terminal_snr"}
        return {"kind": self.kind, "num_steps": self.num_steps, **params,
                "zero_terminal_snr": bool(self.params.get("zero_terminal_snr", False))}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> NoiseSchedule:
        spec = dict(spec)
        kind = spec.pop("kind", "linear")
        if kind == "custom":
            return cls(spec["betas"])
        return cls.from_name(kind, spec.pop("num_steps", 1000), **spec)

    # ----- zero terminal SNR --------------------------------------------------------------------------------

    def rescale_zero_terminal_snr(self) -> NoiseSchedule:
        """Lin et al. 2024, Algorithm 1: shift and scale √ᾱ_t so that √ᾱ_T = 0 while √ᾱ_1 is unchanged.

        √ᾱ'_t = (√ᾱ_t - √ᾱ_T) · √ᾱ_1 / (√ᾱ_1 - √ᾱ_T). The last step becomes pure noise (SNR = 0), which
        ε-prediction cannot use (x̂_0 = (x_t - √(1-ᾱ_t) ε̂)/√ᾱ_t divides by zero): pair it with v-prediction.
        """
        sqrt_ac = self.sqrt_alphas_cumprod.clone()
        first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
        sqrt_ac = (sqrt_ac - last) * first / (first - last)
        return NoiseSchedule.from_alphas_cumprod(sqrt_ac**2, self.kind, {**self.params, "zero_terminal_snr": True})

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor, kind: str = "custom",
                            params: dict[str, Any] | None = None) -> NoiseSchedule:
        """The schedule with exactly these ᾱ_t (strictly decreasing): α_t = ᾱ_t/ᾱ_{t-1}, β_t = 1 - α_t.

        ᾱ is kept as given rather than recomputed as a cumulative product of the α_t, so a rescaled or respaced
        schedule has the very ᾱ_t it was built from (ᾱ_T = 0 stays exactly 0).
        """
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
        if ac.numel() < 1 or not bool(((alphas >= 0) & (alphas < 1)).all()):
            raise DdpmkitError("alphas_cumprod must be non-empty and strictly decreasing within [0, 1)")
        schedule = cls.__new__(cls)
        schedule.kind, schedule.params = kind, dict(params or {})
        schedule.alphas, schedule.betas, schedule.alphas_cumprod = alphas, 1.0 - alphas, ac
        schedule._derive()
        return schedule

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(self.alphas_cumprod[-1] == 0)


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise DdpmkitError(f"num_steps must be a positive integer, got {num_steps!r}")
