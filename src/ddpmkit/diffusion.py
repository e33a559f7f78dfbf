"""The diffusion math in one place: forward process, prediction targets, posterior, reverse step, training loss.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021; Salimans & Ho 2022):

    x_t   = √ᾱ_t x_0 + √(1-ᾱ_t) ε                         forward marginal q(x_t | x_0)
    v     = √ᾱ_t ε - √(1-ᾱ_t) x_0                          velocity target
    x_0   = √ᾱ_t x_t - √(1-ᾱ_t) v,   ε = √(1-ᾱ_t) x_t + √ᾱ_t v
    μ̃_t   = coef1 · x_0 + coef2 · x_t                      posterior mean of q(x_{t-1} | x_t, x_0)
    β̃_t   = β_t (1-ᾱ_{t-1}) / (1-ᾱ_t)                      posterior variance

The model predicts one of ε, x_0 or v (``Prediction``); the reverse step p(x_{t-1} | x_t) uses the posterior
with x̂_0 in place of x_0 and a fixed or learned variance (``Variance``). A learned variance is trained with
Nichol & Dhariwal's hybrid loss L_simple + λ L_vlb, the variational bound's terms (:meth:`Diffusion.vlb_terms`):

    L_0 = −log p(x_0 | x_1)            (discretized Gaussian decoder, 8-bit data)
    L_t = KL(q(x_{t-1} | x_t, x_0) ‖ p(x_{t-1} | x_t))     for t ≥ 1
    L_T = KL(q(x_T | x_0) ‖ N(0, I))   (the prior term; no parameters)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .device import randn
from .errors import DdpmkitError
from .likelihood import discretized_gaussian_log_likelihood, nats_to_bits_per_dim, normal_kl
from .schedule import NoiseSchedule


class Prediction(str, enum.Enum):
    """What the network outputs."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


class Variance(str, enum.Enum):
    """The variance of p(x_{t-1} | x_t): β̃_t (fixed_small) or β_t (fixed_large), as in DDPM, or learned between
    them (learned_range, Nichol & Dhariwal 2021 eq. 15; the model outputs C more channels)."""

    FIXED_SMALL = "fixed_small"
    FIXED_LARGE = "fixed_large"
    LEARNED_RANGE = "learned_range"


class LossType(str, enum.Enum):
    MSE = "mse"
    L1 = "l1"


def _enum(kind: type[enum.Enum], value: object, what: str) -> enum.Enum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
        raise DdpmkitError(f"unknown {what} '{value}'; choose one of {choices}") from None


def extract(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] as a (B, 1, 1, …) tensor in ``like``'s dtype and device, broadcastable against ``like``.

    The float64 schedule is cast to ``like``'s dtype before it moves: MPS has no float64, and casting before or
    after the lookup gives the same numbers.
    """
    out = values.to(like.dtype).to(like.device)[t.to(like.device).long()]
    return out.reshape(t.shape[0], *([1] * (like.dim() - 1)))


@dataclass
class LossTerms:
    """One training loss evaluation.

    loss: the scalar to backpropagate (mean of per_sample).
    per_sample: weighted loss of each sample (B,), for logging by timestep.
    weights: the min-SNR weight of each sample (ones when unweighted).
    t: the timesteps drawn (B,).
    vlb: with a learned variance, each sample's L_t in bits/dim (detached), which an importance sampler of t
        learns from; else None.
    """

    loss: Tensor
    per_sample: Tensor
    weights: Tensor
    t: Tensor
    vlb: Tensor | None = None


@dataclass
class ReverseStep:
    """p(x_{t-1} | x_t) for one step: its mean, variance, log-variance, and the x̂_0, ε̂ it was built from."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    x0: Tensor
    eps: Tensor


class Diffusion:
    """Gaussian diffusion over a :class:`NoiseSchedule`.

    Args:
        schedule: the β_t.
        prediction: "eps" (default), "x0" or "v" — what the model outputs.
        variance: "fixed_small" (β̃_t, default) or "fixed_large" (β_t) for the reverse step.
        loss_type: "mse" (default) or "l1" on the prediction target.
        min_snr_gamma: γ for min-SNR-γ loss weighting (Hang et al. 2023; 5 is their default), or None.
        vlb_weight: λ of the hybrid loss L_simple + λ L_vlb when the variance is learned (Nichol & Dhariwal: 0.001).
        clip_denoised: clip x̂_0 to the data range [-1, 1] at every sampling step (DDPM's habit, the default), or
            leave it as predicted; what a sampler does when its caller does not say. Clipping is biased where the
            data sit on the boundary: clamp(x̂_0) ≥ x̂_0, so on MNIST's black background (82% of pixels exactly -1)
            it lifts every step's x̂_0 and leaves a faint haze (docs/experiments/clip_denoised.json).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        variance: str = "fixed_small",
        loss_type: str = "mse",
        min_snr_gamma: float | None = None,
        vlb_weight: float = 0.001,
        clip_denoised: bool = True,
    ):
        self.schedule = schedule
        self.clip_denoised = bool(clip_denoised)
        self.prediction = _enum(Prediction, prediction, "prediction target")
        self.variance = _enum(Variance, variance, "variance")
        self.loss_type = _enum(LossType, loss_type, "loss type")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise DdpmkitError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        self.min_snr_gamma = min_snr_gamma
        if not vlb_weight >= 0:
            raise DdpmkitError(f"vlb_weight must be non-negative, got {vlb_weight}")
        self.vlb_weight = float(vlb_weight)
        if schedule.zero_terminal_snr and self.prediction is Prediction.EPS:
            raise DdpmkitError("a zero-terminal-SNR schedule cannot be used with eps-prediction; use prediction='v'")
        s = schedule
        if self.variance is not Variance.FIXED_LARGE:  # fixed_small; learned_range's lower end
            self._var, self._log_var = s.posterior_variance, s.posterior_log_variance_clipped
        else:
            # improved-diffusion: fixed_large uses β_t, with β̃_1 in place of β_0 for a better x_0 likelihood.
            first = s.posterior_variance[1:2] if s.num_steps > 1 else s.betas[:1]
            large = torch.cat([first, s.betas[1:]])
            self._var, self._log_var = large, torch.log(large)

        # The training timestep the model sees at each index: 0..T-1 here, the kept subsequence after respace().
        self.timesteps = torch.arange(schedule.num_steps)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def learns_variance(self) -> bool:
        return self.variance is Variance.LEARNED_RANGE

    def __repr__(self) -> str:
        spaced = f", respaced from {int(self.timesteps[-1]) + 1}" if self.is_respaced else ""
        return (f"Diffusion({self.schedule!r}, prediction={self.prediction.value}, "
                f"variance={self.variance.value}, loss={self.loss_type.value}, min_snr_gamma={self.min_snr_gamma}, "
                f"clip_denoised={self.clip_denoised}{spaced})")

    @property
    def is_respaced(self) -> bool:
        return not torch.equal(self.timesteps, torch.arange(self.num_steps))

    def respace(self, timesteps: Sequence[int] | Tensor) -> Diffusion:
        """The same process observed only at ``timesteps``: a K-step diffusion over the kept subsequence.

        Nichol & Dhariwal 2021, section 4 (improved-diffusion's ``SpacedDiffusion``): with t_0 < … < t_{K-1},

            ᾱ'_i = ᾱ_{t_i},   β'_i = 1 - ᾱ'_i / ᾱ'_{i-1}   (ᾱ'_{-1} = 1),

        so the posterior q(x_{i-1} | x_i, x_0), the reverse step, a learned variance's interpolation between β'_i and
        β̃'_i, and the variational bound are the usual formulas over β'. Index i of the result is timestep
        ``timesteps[i]`` of this process, which is what the model is called with (``result.timesteps[i]``).
        All T timesteps give back this process unchanged.
        """
        # on the CPU, where the schedule lives (timesteps on a GPU could not index it)
        kept = torch.as_tensor(timesteps, dtype=torch.long, device="cpu").flatten().unique(sorted=True)
        if kept.numel() < 1 or kept[0] < 0 or kept[-1] >= self.num_steps:
            raise DdpmkitError(f"respaced timesteps must lie in 0..{self.num_steps - 1}")
        if kept.numel() == self.num_steps:
            return self
        schedule = NoiseSchedule.from_alphas_cumprod(self.schedule.alphas_cumprod[kept], "respaced",
                                                     {"of": self.schedule.kind, "steps": int(kept.numel())})
        spaced = Diffusion(schedule, self.prediction.value, self.variance.value, self.loss_type.value,
                           self.min_snr_gamma, self.vlb_weight, self.clip_denoised)
        spaced.timesteps = self.timesteps[kept]
        return spaced

    # ----- forward process ----------------------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε, with one timestep per sample (t of shape (B,))."""
        noise = torch.randn_like(x0) if noise is None else noise
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, x0) * x0 + extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean √ᾱ_t x_0 and variance 1-ᾱ_t of q(x_t | x_0)."""
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, x0) * x0, extract(1.0 - s.alphas_cumprod, t, x0).expand_as(x0)

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean μ̃_t = coef1·x_0 + coef2·x_t, variance β̃_t and clipped log β̃_t of q(x_{t-1} | x_t, x_0)."""
        s = self.schedule
        mean = extract(s.posterior_mean_coef1, t, x_t) * x0 + extract(s.posterior_mean_coef2, t, x_t) * x_t
        return mean, extract(s.posterior_variance, t, x_t), extract(s.posterior_log_variance_clipped, t, x_t)

    # ----- prediction targets and conversions -----------------------------------------------------------------

    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t."""
        s = self.schedule
        return (x_t - extract(s.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(s.sqrt_alphas_cumprod, t, x_t)

    def eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """ε = (x_t - √ᾱ_t x_0) / √(1-ᾱ_t)."""
        s = self.schedule
        return (x_t - extract(s.sqrt_alphas_cumprod, t, x_t) * x0) / extract(s.sqrt_one_minus_alphas_cumprod, t, x_t)

    def v_from_x0_eps(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """v = √ᾱ_t ε - √(1-ᾱ_t) x_0."""
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, x0) * eps - extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 = √ᾱ_t x_t - √(1-ᾱ_t) v."""
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, x_t) * x_t - extract(s.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """ε = √(1-ᾱ_t) x_t + √ᾱ_t v."""
        s = self.schedule
        return extract(s.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + extract(s.sqrt_alphas_cumprod, t, x_t) * v

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the model should output for (x_0, ε, t): ε, x_0 or v."""
        if self.prediction is Prediction.EPS:
            return noise
        if self.prediction is Prediction.X0:
            return x0
        return self.v_from_x0_eps(x0, noise, t)

    def split_output(self, model_output: Tensor, channels: int) -> Tensor:
        """The prediction part of a model output (the first ``channels`` channels when a variance is learned too)."""
        if model_output.shape[1] == channels:
            return model_output
        if model_output.shape[1] == 2 * channels:
            return model_output[:, :channels]
        raise DdpmkitError(
            f"model returned {model_output.shape[1]} channels for {channels}-channel images; "
            "check the UNet's out_channels"
        )

    def predict_x0_eps(self, prediction: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) from the model's prediction of ε, x_0 or v."""
        if self.prediction is Prediction.EPS:
            return self.x0_from_eps(x_t, t, prediction), prediction
        if self.prediction is Prediction.X0:
            return prediction, self.eps_from_x0(x_t, t, prediction)
        return self.x0_from_v(x_t, t, prediction), self.eps_from_v(x_t, t, prediction)

    def denoise(self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool | None = None,
                dynamic_threshold: float | None = None) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) from a model output at x_t: x̂_0 optionally clipped to [-1, 1] (``clip_denoised``; None: this
        process's setting) or dynamically thresholded (Imagen), and ε̂ = (x_t - √ᾱ_t x̂_0)/√(1 - ᾱ_t) recomputed
        from the clipped x̂_0 so that every sampler sees a consistent pair."""
        clip_denoised = self.clip_denoised if clip_denoised is None else clip_denoised
        prediction = self.split_output(model_output, x_t.shape[1]).to(x_t.dtype)
        x0, eps = self.predict_x0_eps(prediction, x_t, t)
        if dynamic_threshold is not None or clip_denoised:
            x0 = dynamic_thresholding(x0, dynamic_threshold) if dynamic_threshold is not None else x0.clamp(-1, 1)
            eps = self.eps_from_x0(x_t, t, x0)
        return x0, eps

    # ----- reverse process ----------------------------------------------------------------------------------

    def p_mean_variance(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Tensor,
        clip_denoised: bool | None = None,
        dynamic_threshold: float | None = None,
    ) -> ReverseStep:
        """p(x_{t-1} | x_t) = N(μ̃_t(x̂_0, x_t), σ_t²) for the model's output at x_t (t indexes this process).

        The prediction is the output's first C channels. With a learned variance the other C channels v give,
        per pixel (improved-diffusion's LEARNED_RANGE: v ∈ [−1, 1] maps to f = (v + 1)/2),

            log σ_t² = f log β_t + (1 − f) log β̃_t,

        with β and β̃ of this (possibly respaced) process. x̂_0 is optionally clipped to [-1, 1] (``clip_denoised``;
        None: this process's ``clip_denoised``) or dynamically thresholded (Imagen); ε̂ is then recomputed from the
        clipped x̂_0 so that every sampler sees a consistent pair.
        """
        channels = x_t.shape[1]
        if self.learns_variance and model_output.shape[1] != 2 * channels:
            raise DdpmkitError(f"a learned variance needs {2 * channels} output channels (prediction and variance), "
                               f"the model gave {model_output.shape[1]}; build the UNet with learn_sigma=True")
        x0, eps = self.denoise(model_output, x_t, t, clip_denoised, dynamic_threshold)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        if self.learns_variance:
            frac = (model_output[:, channels:].to(x_t.dtype) + 1) / 2
            min_log = extract(self.schedule.posterior_log_variance_clipped, t, x_t)
            max_log = extract(torch.log(self.schedule.betas), t, x_t)
            log_variance = frac * max_log + (1 - frac) * min_log
            return ReverseStep(mean, torch.exp(log_variance), log_variance, x0, eps)
        return ReverseStep(mean, extract(self._var, t, x_t), extract(self._log_var, t, x_t), x0, eps)

    # ----- the variational bound ----------------------------------------------------------------------------

    def vlb_terms(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """L_t per sample in bits per dimension: the decoder NLL where t = 0, else KL(q(x_{t-1}|x_t,x_0) ‖ p).

        p is :meth:`p_mean_variance` without clipping x̂_0 (the bound of the model as it is). x_0 must lie on the
        8-bit grid in [−1, 1] for L_0 to be a likelihood.
        """
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = normal_kl(true_mean, true_log_var, out.mean, out.log_variance).flatten(1).mean(dim=1)
        decoder_nll = -discretized_gaussian_log_likelihood(x0, out.mean, 0.5 * out.log_variance).flatten(1).mean(1)
        return nats_to_bits_per_dim(torch.where(t == 0, decoder_nll, kl))

    def prior_bpd(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per sample in bits per dimension (no parameters; small for a good T)."""
        t = torch.full((x0.shape[0],), self.num_steps - 1, dtype=torch.long, device=x0.device)
        mean, variance = self.q_mean_variance(x0, t)
        kl = normal_kl(mean, torch.log(variance), torch.zeros_like(mean), torch.zeros_like(mean))
        return nats_to_bits_per_dim(kl.flatten(1).mean(dim=1))

    @torch.no_grad()
    def bits_per_dim(self, model_fn: Callable[[Tensor, Tensor], Tensor], x0: Tensor,
                     generator: torch.Generator | None = None, callback: Callable[[int], None] | None = None,
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """The variational bound −log p(x_0) ≤ L_T + Σ_t L_t per sample, in bits per dimension.

        Every term of this process (all T, or the K of a respaced one: a shorter diffusion's bound, looser) is
        evaluated on its own draw of x_t ∼ q(x_t | x_0); ``model_fn(x, t)`` gets the training timestep. Returns
        (total (B,), terms (B, K) with column i the L_i of index i, prior (B,)). ``callback(i)`` after each term.
        """
        terms = torch.zeros(x0.shape[0], self.num_steps, dtype=torch.float64, device=x0.device)
        for i in range(self.num_steps - 1, -1, -1):
            index = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
            x_t = self.q_sample(x0, index, noise)
            output = model_fn(x_t, self.timesteps.to(x0.device)[index])
            terms[:, i] = self.vlb_terms(output.to(x0.dtype), x0, x_t, index).double()
            if callback is not None:
                callback(i)
        prior = self.prior_bpd(x0).double()
        return terms.sum(dim=1) + prior, terms, prior

    # ----- training -----------------------------------------------------------------------------------------

    def loss_weights(self, t: Tensor) -> Tensor:
        """min-SNR-γ weights (Hang et al. 2023), expressed for the model's target.

        With SNR_t = ᾱ_t/(1-ᾱ_t), the x_0-space weight min(SNR_t, γ) becomes
        min(SNR_t, γ)/SNR_t for ε, min(SNR_t, γ) for x_0 and min(SNR_t, γ)/(SNR_t + 1) for v.
        """
        if self.min_snr_gamma is None:
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        # float64 only where the device has it (CPU, CUDA); MPS has none
        snr_dtype = torch.float64 if t.device.type in ("cpu", "cuda") else torch.float32
        snr = self.schedule.snr.to(snr_dtype).to(t.device)[t]
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction is Prediction.EPS:
            weights = clipped / snr
        elif self.prediction is Prediction.X0:
            weights = clipped
        else:
            weights = clipped / (snr + 1)
        return weights.float()

    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> Tensor:
        """t ~ Uniform{0, …, T-1}, one per sample."""
        return torch.randint(0, self.num_steps, (batch,), generator=generator,
                             device=generator.device if generator is not None else device).to(device)

    def training_losses(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        t_weights: Tensor | None = None,
    ) -> LossTerms:
        """Draw t and ε, noise x_0 to x_t, and score the model's prediction of the target.

        per_sample_i = w(t_i) · mean over pixels of ℓ(model(x_t, t, **model_kwargs)_i - target_i), ℓ = squared or
        absolute error. ``model_kwargs`` carries the conditioning (e.g. ``{"labels": y}``), one row per sample.

        With a learned variance the hybrid loss adds λ·T·L_t (bits/dim), whose mean over uniform t is λ·L_vlb
        (the sum over t); inside L_t the prediction is detached, so L_vlb trains only the variance and L_simple
        only the mean (Nichol & Dhariwal 2021, section 3.1). ``t_weights`` (e.g. 1/(T p_t) from an importance
        sampler of t) multiply each sample's loss.
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t, **(model_kwargs or {}))
        prediction = self.split_output(output, x0.shape[1]).float()
        target = self.target(x0, noise, t).float()
        if self.loss_type is LossType.MSE:
            error = F.mse_loss(prediction, target, reduction="none")
        else:
            error = F.l1_loss(prediction, target, reduction="none")
        weights = self.loss_weights(t)
        per_sample = error.flatten(1).mean(dim=1) * weights
        vlb = None
        if self.learns_variance:
            c = x0.shape[1]
            frozen = torch.cat([output[:, :c].detach(), output[:, c:]], dim=1)
            dtype = torch.promote_types(frozen.dtype, torch.float32)  # bf16/fp16 outputs: the bound in float32
            vlb_t = self.vlb_terms(frozen.to(dtype), x0.to(dtype), x_t.to(dtype), t)
            per_sample = per_sample + self.vlb_weight * self.num_steps * vlb_t
            vlb = vlb_t.detach()
        if t_weights is not None:
            per_sample = per_sample * t_weights
        return LossTerms(per_sample.mean(), per_sample.detach(), weights, t, vlb)

    def loss(self, model: Callable[..., Tensor], x0: Tensor, model_kwargs: dict[str, Any] | None = None,
             **kwargs: Any) -> Tensor:
        """The scalar training loss (see :meth:`training_losses`)."""
        return self.training_losses(model, x0, model_kwargs, **kwargs).loss

    # ----- config ---------------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        spec = {"schedule": self.schedule.to_dict(), "prediction": self.prediction.value,
                "variance": self.variance.value, "loss_type": self.loss_type.value,
                "min_snr_gamma": self.min_snr_gamma}
        if self.learns_variance:
            spec["vlb_weight"] = self.vlb_weight
        if not self.clip_denoised:  # written only when off: earlier checkpoints (no key) clip, as they always did
            spec["clip_denoised"] = False
        return spec

    @classmethod
    def from_dict(cls, spec: dict) -> Diffusion:
        spec = dict(spec)
        schedule = NoiseSchedule.from_dict(spec.pop("schedule"))
        return cls(schedule, **spec)


def dynamic_thresholding(x0: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen (Saharia et al. 2022): s = max(1, quantile_p |x̂_0|) per sample; x̂_0 ← clamp(x̂_0, -s, s) / s."""
    s = torch.quantile(x0.detach().abs().flatten(1).float(), percentile, dim=1).clamp(min=1.0)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s
