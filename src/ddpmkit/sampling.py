"""Samplers as plain functions over a ``model_fn(x_t, t) -> prediction`` (k-diffusion's shape, ours in code).

Each sampler starts from x_T ~ N(0, I) and walks a descending list of timesteps. ``callback(i, t, x, x0)`` is
called after every step with the new x and the step's x̂_0 (progress bars and denoising animations use it).

- ``ddpm``: ancestral sampling p(x_{t-1} | x_t) over all T steps (Ho et al. 2020), or a respaced subsequence
  (Nichol & Dhariwal 2021, section 4) when ``steps`` < T.
- ``ddim``: Song et al. 2021, eq. 12, with η ∈ [0, 1] on any subsequence; deterministic for η = 0.
- ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022), second-order multistep in x̂_0 space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .diffusion import Diffusion, Variance
from .errors import DdpmkitError

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int, Tensor, Tensor], None]

SAMPLERS = ("ddpm", "ddim", "dpm++2m")
SPACINGS = ("leading", "trailing", "linspace")


def timestep_spacing(num_train_steps: int, steps: int, spacing: str = "trailing") -> Tensor:
    """A descending subsequence of ``steps`` training timesteps in [0, T-1].

    leading (DDIM paper, diffusers' default): t_i = i · ⌊T/steps⌋, so the largest is T - ⌊T/steps⌋.
    trailing (Lin et al. 2024, table 2): t_i = round(T - i · T/steps) - 1, so sampling starts at T-1.
    linspace: round(linspace(0, T-1, steps)).
    """
    if not 1 <= steps <= num_train_steps:
        raise DdpmkitError(f"steps must be between 1 and {num_train_steps}, got {steps}")
    if spacing == "leading":
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


def _batch_t(t: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


@torch.inference_mode()
def ddpm(
    model_fn: ModelFn,
    diffusion: Diffusion,
    x: Tensor,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_denoised: bool = True,
    dynamic_threshold: float | None = None,
) -> Tensor:
    """Ancestral sampling: x_{t-1} = μ̃_t(x̂_0, x_t) + σ_t z, z ~ N(0, I), no noise at the last step.

    σ_t² is β̃_t (fixed_small) or β_t (fixed_large) from ``diffusion.variance``. With ``steps`` < T the chain is
    respaced: on the subsequence t_i, β'_i = 1 - ᾱ_{t_i}/ᾱ_{t_{i-1}} defines a shorter DDPM (improved-diffusion).
    """
    T = diffusion.num_steps
    if steps is not None and steps != T:
        return _respaced_ddpm(model_fn, diffusion, x, steps, generator, callback, clip_denoised, dynamic_threshold)
    for i, t in enumerate(range(T - 1, -1, -1)):
        tt = _batch_t(t, x)
        out = diffusion.p_mean_variance(model_fn(x, tt).float(), x, tt, clip_denoised, dynamic_threshold)
        x = out.mean + (torch.exp(0.5 * out.log_variance) * _randn(x, generator) if t > 0 else 0.0)
        if callback is not None:
            callback(i, t, x, out.x0)
    return x


def _respaced_ddpm(model_fn, diffusion, x, steps, generator, callback, clip_denoised, dynamic_threshold):
    ts = timestep_spacing(diffusion.num_steps, steps, "linspace")
    ac = diffusion.schedule.alphas_cumprod
    for i, t in enumerate(ts.tolist()):
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        a_t, a_prev = float(ac[t]), (float(ac[t_prev]) if t_prev >= 0 else 1.0)
        beta = 1.0 - a_t / a_prev
        tt = _batch_t(t, x)
        out = diffusion.p_mean_variance(model_fn(x, tt).float(), x, tt, clip_denoised, dynamic_threshold)
        coef1 = math.sqrt(a_prev) * beta / (1.0 - a_t)
        coef2 = math.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
        x_next = coef1 * out.x0 + coef2 * x
        if t_prev >= 0:
            small = beta * (1.0 - a_prev) / (1.0 - a_t)
            var = small if diffusion.variance is Variance.FIXED_SMALL else beta
            x_next = x_next + math.sqrt(var) * _randn(x, generator)
        x = x_next
        if callback is not None:
            callback(i, t, x, out.x0)
    return x


@torch.inference_mode()
def ddim(
    model_fn: ModelFn,
    diffusion: Diffusion,
    x: Tensor,
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_denoised: bool = True,
    dynamic_threshold: float | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) from t to the previous timestep s of the subsequence:

        x_s = √ᾱ_s x̂_0 + √(1 - ᾱ_s - σ²) ε̂ + σ z,   σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_s),

    with ᾱ_s = 1 after the last step. η = 0 is deterministic; η = 1 over all T steps is DDPM with β̃_t.
    """
    if not 0.0 <= eta <= 1.0:
        raise DdpmkitError(f"eta must be in [0, 1], got {eta}")
    ts = timestep_spacing(diffusion.num_steps, steps, spacing)
    ac = diffusion.schedule.alphas_cumprod
    for i, t in enumerate(ts.tolist()):
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        a_t, a_prev = float(ac[t]), (float(ac[t_prev]) if t_prev >= 0 else 1.0)
        tt = _batch_t(t, x)
        out = diffusion.p_mean_variance(model_fn(x, tt).float(), x, tt, clip_denoised, dynamic_threshold)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t)) * math.sqrt(max(0.0, 1.0 - a_t / a_prev))
        x = math.sqrt(a_prev) * out.x0 + math.sqrt(max(0.0, 1.0 - a_prev - sigma**2)) * out.eps
        if sigma > 0:
            x = x + sigma * _randn(x, generator)
        if callback is not None:
            callback(i, t, x, out.x0)
    return x


@torch.inference_mode()
def dpmpp_2m(
    model_fn: ModelFn,
    diffusion: Diffusion,
    x: Tensor,
    steps: int = 20,
    spacing: str = "trailing",
    callback: Callback | None = None,
    clip_denoised: bool = True,
    dynamic_threshold: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2) with α_t = √ᾱ_t, σ_t = √(1-ᾱ_t), λ_t = log(α_t/σ_t):

        D_i = x̂_0 (first step, last step) or (1 + 1/(2r)) x̂_0,i - 1/(2r) x̂_0,i-1, r = h_{i-1}/h_i
        x_s = (σ_s/σ_t) x_t - α_s (e^{-h} - 1) D_i,  h = λ_s - λ_t.

    The last step jumps to the clean image x̂_0 (σ = 0), as k-diffusion does. Deterministic; ``generator`` unused.
    """
    ts = timestep_spacing(diffusion.num_steps, steps, spacing)
    ac = diffusion.schedule.alphas_cumprod

    def lam(t: int) -> float:
        a = float(ac[t])
        return 0.5 * math.log(a / (1.0 - a)) if a > 0 else -math.inf  # zero terminal SNR: λ_T = -∞

    x0_prev, h_prev = None, None
    for i, t in enumerate(ts.tolist()):
        tt = _batch_t(t, x)
        out = diffusion.p_mean_variance(model_fn(x, tt).float(), x, tt, clip_denoised, dynamic_threshold)
        if i + 1 == len(ts):
            x = out.x0
        else:
            s = int(ts[i + 1])
            h = lam(s) - lam(t)
            if x0_prev is None:
                d = out.x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * out.x0 - (1 / (2 * r)) * x0_prev
            sigma_t, sigma_s = math.sqrt(1 - float(ac[t])), math.sqrt(1 - float(ac[s]))
            x = (sigma_s / sigma_t) * x - math.sqrt(float(ac[s])) * math.expm1(-h) * d  # h = ∞ → σ_s x + α_s D
            x0_prev, h_prev = out.x0, h
        if callback is not None:
            callback(i, t, x, out.x0)
    return x


def guided_model_fn(model: Callable[..., Tensor], labels: Tensor, guidance: float) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): pred = pred_∅ + w (pred_c - pred_∅), both in one batch.

    The null class is ``labels = None`` for the model. A learned-variance output keeps the conditional variance.
    """

    def fn(x: Tensor, t: Tensor) -> Tensor:
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, _null_labels(model, labels)]))
        cond, uncond = both.chunk(2)
        c = x.shape[1]
        guided = uncond[:, :c] + guidance * (cond[:, :c] - uncond[:, :c])
        return torch.cat([guided, cond[:, c:]], dim=1) if cond.shape[1] > c else guided

    return fn


def _null_labels(model: Callable[..., Tensor], labels: Tensor) -> Tensor:
    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if num_classes is None:
        raise DdpmkitError("guidance needs a class-conditional model (num_classes set in its config)")
    return torch.full_like(labels, num_classes)


def sample(
    model: Callable[..., Tensor],
    diffusion: Diffusion,
    shape: Sequence[int],
    sampler: str = "ddim",
    steps: int | None = 50,
    eta: float = 0.0,
    spacing: str = "trailing",
    labels: Tensor | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_denoised: bool = True,
    dynamic_threshold: float | None = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Generate a batch: x_T ~ N(0, I) of ``shape`` (from ``generator``), then run ``sampler``.

    ``model(x, t)`` or ``model(x, t, labels)`` for a class-conditional model; ``guidance`` > 1 enables
    classifier-free guidance. ``autocast_dtype`` (e.g. torch.bfloat16) runs the model under autocast while the
    sampler's arithmetic stays in float32. Returns float32 images, nominally in [-1, 1].
    """
    if sampler not in SAMPLERS:
        raise DdpmkitError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    if device is None:
        device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else "cpu"
    device = torch.device(device)
    if x_T is None:
        gen_device = generator.device if generator is not None else device
        x_T = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32)
    x = x_T.to(device, torch.float32)
    if labels is not None:
        labels = labels.to(device)
    if guidance is not None and guidance != 1.0:
        if labels is None:
            raise DdpmkitError("guidance needs labels: pass the classes to generate")
        base_fn = guided_model_fn(model, labels, guidance)
    elif labels is not None:
        base_fn = lambda x_, t_: model(x_, t_, labels)
    else:
        base_fn = lambda x_, t_: model(x_, t_)

    def model_fn(x_: Tensor, t_: Tensor) -> Tensor:
        if autocast_dtype is None:
            out = base_fn(x_, t_)
        else:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                out = base_fn(x_, t_)
        return diffusion.split_output(out, x_.shape[1]).float()  # a learned variance's channels are not used

    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        common = dict(generator=generator, callback=callback, clip_denoised=clip_denoised,
                      dynamic_threshold=dynamic_threshold)
        if sampler == "ddpm":
            return ddpm(model_fn, diffusion, x, steps=steps, **common)
        if sampler == "ddim":
            return ddim(model_fn, diffusion, x, steps=50 if steps is None else steps, eta=eta, spacing=spacing,
                        **common)
        return dpmpp_2m(model_fn, diffusion, x, steps=20 if steps is None else steps, spacing=spacing, **common)
    finally:
        if isinstance(model, torch.nn.Module) and was_training:
            model.train()
