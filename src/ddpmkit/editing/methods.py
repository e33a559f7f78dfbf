"""Editing an image with a trained model, over the sampler loop and its step rules.

All four work on images x_0 in [-1, 1] of shape (N, C, H, W), with any condition (``model_kwargs``, guidance) and
any sampler whose step rule allows it (:data:`~ddpmkit.sampling.SAMPLER_REGISTRY`). Timesteps t_{K-1} > … > t_0 are
the sampler's K steps; ᾱ_i below is ᾱ_{t_i} (the respaced process), with ᾱ_{-1} = 1.

- :func:`img2img` (SDEdit, Meng et al. 2022): noise the image to the level of step ⌊strength·K⌋ from the end,
  x_{t} = √ᾱ_t x_0 + √(1-ᾱ_t) ε, then run only the last ⌊strength·K⌋ steps. Strength 0 returns the input; strength 1
  starts from ε alone, which is sampling from noise.
- :func:`inpaint` (RePaint, Lugmayr et al. 2022): after every step, the known pixels (mask 0) are replaced by the
  input noised to the new level, x_{i-1} = m ⊙ x^{model}_{i-1} + (1 - m) ⊙ q(x_{i-1} | x_0), and exactly by x_0 after
  the last step. With resampling, every ``jump_length`` steps the sample is noised back up ``jump_length`` steps,
  x_{i} = √(ᾱ_i/ᾱ_{i-1}) x_{i-1} + √(1 - ᾱ_i/ᾱ_{i-1}) z, and walked down again, ``resample`` times in all, so
  the generated pixels can agree with the known ones. ``resample=1`` is plain replacement.
- :func:`invert` (DDIM inversion, Song et al. 2021, section 4.3; Dhariwal & Nichol 2021, appendix F): the
  deterministic DDIM map run upward, x_{i} = √(ᾱ_i/ᾱ_{i-1}) x_{i-1} + (√(1-ᾱ_i) - √(ᾱ_i/ᾱ_{i-1}) √(1-ᾱ_{i-1})) ε̂,
  with ε̂ taken at the current point x_{i-1} (at t_0 for the clean image), where DDIM would take it at x_i.
  DDIM with η = 0 over the same steps maps the result back; the error shrinks with the step size.
- :func:`interpolate`: both images inverted, their noises joined by spherical interpolation (slerp), every point
  decoded by DDIM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..device import randn
from ..diffusion import Diffusion
from ..errors import DdpmkitError
from ..sampling import (
    SAMPLER_REGISTRY,
    Callback,
    ModelDenoiser,
    SamplerStep,
    _batch_index,
    check_sampler_args,
    conditioned_model_fn,
    eval_mode,
    model_device,
    sample_loop,
)

# ----- checks shared by the entry points ---------------------------------------------------------------------

def check_strength(strength: float) -> float:
    """``strength`` as a float in [0, 1], or a one-line error."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise DdpmkitError(f"--strength must be in [0, 1] (0 keeps the input, 1 ignores it), got {strength}")
    return float(strength)


def check_mask(mask: Tensor, image: Tensor) -> Tensor:
    """A binary mask of the image's height and width (1 = repaint, 0 = keep), as float (N or 1, 1, H, W)."""
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:] or \
            mask.shape[0] not in (1, image.shape[0]):
        raise DdpmkitError(f"the mask is {tuple(mask.shape[-2:])} but the image is {tuple(image.shape[-2:])}; "
                           "draw the mask at the image's size")
    mask = mask.double()
    values = mask.unique()
    if not bool(((values == 0) | (values == 1)).all()):
        raise DdpmkitError("the mask is not binary: use 0 (black, keep) and 1 (white, repaint) only")
    area = mask.flatten(1).mean(1)
    if bool((area == 0).any()):
        raise DdpmkitError("the mask is empty: paint white where the image should be repainted")
    if bool((area == 1).any()):
        raise DdpmkitError("the mask covers the whole image: that is sampling from noise (ddpmkit sample), "
                           "leave some pixels black to keep")
    return mask.float()


def check_resampling(sampler: str, jump_length: int, resample: int) -> None:
    """RePaint's jumps need a step rule that keeps no history (a multistep solver's history is of another path)."""
    for name, value in (("jump length", jump_length), ("resample", resample)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DdpmkitError(f"the {name} must be a whole number >= 1, got {value!r}")
    if resample > 1 and SAMPLER_REGISTRY[sampler].multistep:
        memoryless = ", ".join(name for name, spec in SAMPLER_REGISTRY.items() if not spec.multistep)
        raise DdpmkitError(f"resampling (RePaint's jumps) needs a one-step sampler ({memoryless}); {sampler} "
                           "remembers earlier steps: use --resample 1 with it, or another sampler")


# ----- SDEdit ---------------------------------------------------------------------------------------------

def img2img(
    model: Callable[..., Tensor],
    diffusion: Diffusion,
    image: Tensor,
    strength: float,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    spacing: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    callback: Callback | None = None,
    clip_denoised: bool | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """SDEdit: the last ⌊strength·K⌋ of the sampler's K steps, from x_0 noised to that level.

    ``noise`` (default: drawn from ``generator`` first, as :func:`~ddpmkit.sampling.sample` draws x_T) noises the
    image, so strength 1 with the same generator is exactly ``sample`` from the same seed.
    """
    strength = check_strength(strength)
    settings = check_sampler_args(sampler, steps, eta, diffusion.num_steps, spacing)
    device = model_device(model, device, image)
    x0 = image.to(device, torch.float64 if image.dtype == torch.float64 else torch.float32)
    if noise is None:
        noise = randn(x0.shape, generator, device, x0.dtype)
    noise = noise.to(device, x0.dtype)
    timesteps = settings.timesteps(diffusion.num_steps, diffusion.schedule.alphas_cumprod)
    kept = int(strength * len(timesteps))
    if kept == 0:
        return x0.clone()
    if kept == len(timesteps):  # from the top of the sampler's chain: x_T ~ N(0, I) stands in for q(x_T | x_0)
        x = noise
    else:
        t_start = int(timesteps[len(timesteps) - kept])
        x = diffusion.q_sample(x0, torch.full((len(x0),), t_start, dtype=torch.long, device=device), noise)
    model_fn = conditioned_model_fn(model, model_kwargs, guidance, None, device, autocast_dtype)
    with eval_mode(model):
        return sample_loop(model_fn, diffusion, x, timesteps[len(timesteps) - kept:], settings.make_step(),
                           generator=generator, callback=callback, clip_denoised=clip_denoised)


# ----- RePaint --------------------------------------------------------------------------------------------

def repaint_path(num_steps: int, jump_length: int = 10, resample: int = 1) -> list[int]:
    """The indices RePaint visits: K-1 down to -1 (clean), going back up ``jump_length`` after every
    ``jump_length`` steps, ``resample - 1`` times at each such point (RePaint's ``get_schedule_jump``; diffusers'
    ``RePaintScheduler.set_timesteps``). Each step down costs one model evaluation: about K · resample in all.
    """
    jumps = {j: resample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    path, i = [num_steps - 1], num_steps - 1
    while i >= 0:
        i -= 1
        path.append(i)
        if jumps.get(i + 1, 0) > 0:  # reached index i + 1's level done: after the step from i + 1, jump back up
            jumps[i + 1] -= 1
            for _ in range(jump_length):
                i += 1
                path.append(i)
    return path


def inpaint(
    model: Callable[..., Tensor],
    diffusion: Diffusion,
    image: Tensor,
    mask: Tensor,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    spacing: str | None = None,
    jump_length: int = 10,
    resample: int = 1,
    model_kwargs: Mapping[str, Any] | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    callback: Callback | None = None,
    clip_denoised: bool | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Fill the pixels where ``mask`` is 1 so that they agree with the rest of ``image`` (RePaint).

    ``mask``: (H, W), (N, H, W) or (N, 1, H, W), 1 = repaint, 0 = keep. The kept pixels of the result equal the
    input exactly. ``noise`` is x_T (default: drawn from ``generator`` first, as ``sample`` does).
    """
    settings = check_sampler_args(sampler, steps, eta, diffusion.num_steps, spacing)
    check_resampling(settings.sampler, jump_length, resample)
    device = model_device(model, device, image)
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    x0 = image.to(device, dtype)
    mask = check_mask(mask.to(device), x0).to(dtype)
    x = (randn(x0.shape, generator, device, dtype) if noise is None else noise.to(device, dtype))
    timesteps = settings.timesteps(diffusion.num_steps, diffusion.schedule.alphas_cumprod)
    process = diffusion.respace(timesteps)
    alphas = process.schedule.alphas_cumprod.to(torch.float64)
    model_fn = conditioned_model_fn(model, model_kwargs, guidance, None, device, autocast_dtype)
    step = settings.make_step()
    denoise = ModelDenoiser(model_fn, diffusion, clip_denoised)
    draw = lambda: randn(x0.shape, generator, device, dtype)
    path = repaint_path(process.num_steps, jump_length, resample)
    batch = lambda value: _batch_index(value, x0)
    downs = sum(1 for a, b in zip(path, path[1:]) if b < a)
    n = 0
    with eval_mode(model), torch.inference_mode():
        for i, j in zip(path, path[1:]):
            if j > i:  # back up one level: q(x_j | x_i) = N(√(ᾱ_j/ᾱ_i) x_i, (1 - ᾱ_j/ᾱ_i) I)
                ratio = float(alphas[j] / alphas[i]) if i >= 0 else float(alphas[j])
                x = math.sqrt(ratio) * x + math.sqrt(1.0 - ratio) * draw()
                continue
            t = int(process.timesteps[i])
            out = process.p_mean_variance(model_fn(x, batch(t)), x, batch(i), clip_denoised)
            generated = step(process, i, x, out, draw, denoise)
            known = x0 if j < 0 else process.q_sample(x0, batch(j), draw())
            x_next = mask * generated + (1 - mask) * known
            if callback is not None:
                callback(SamplerStep(n, downs, t, x_next, mask * out.x0 + (1 - mask) * x0, out.eps, x))
            x, n = x_next, n + 1
    return x


# ----- DDIM inversion and interpolation ------------------------------------------------------------------

def _ddim_timesteps(diffusion: Diffusion, steps: int | None, spacing: str | None):
    """The checked DDIM settings and their timesteps, shared by :func:`invert` and :func:`reconstruct`."""
    settings = check_sampler_args("ddim", steps, 0.0, diffusion.num_steps, spacing)
    return settings, settings.timesteps(diffusion.num_steps, diffusion.schedule.alphas_cumprod)


def invert(
    model: Callable[..., Tensor],
    diffusion: Diffusion,
    image: Tensor,
    steps: int | None = None,
    spacing: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    guidance: float | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """The noise x_{t_{K-1}} from which DDIM (η = 0, the same K steps, no clipping) draws back ``image``."""
    _, timesteps = _ddim_timesteps(diffusion, steps, spacing)
    process = diffusion.respace(timesteps)
    alphas = process.schedule.alphas_cumprod.to(torch.float64)
    if float(alphas[-1]) <= 0.0:
        raise DdpmkitError("this schedule reaches zero signal at its last timestep, where DDIM inversion loses the "
                           "image; invert with --spacing leading (it stops short of t = T-1)")
    device = model_device(model, device, image)
    x = image.to(device, torch.float64 if image.dtype == torch.float64 else torch.float32)
    model_fn = conditioned_model_fn(model, model_kwargs, guidance, None, device, autocast_dtype)
    batch = lambda value: _batch_index(value, x)
    K = process.num_steps
    with eval_mode(model), torch.inference_mode():
        for i in range(K):
            here = max(i - 1, 0)  # ε̂ where x is now (the clean image is read at t_0)
            t = int(process.timesteps[here])
            out = process.p_mean_variance(model_fn(x, batch(t)), x, batch(here), clip_denoised=False)
            a_s = float(alphas[i - 1]) if i > 0 else 1.0
            a_t = float(alphas[i])
            x = math.sqrt(a_t / a_s) * x + (math.sqrt(1 - a_t) - math.sqrt(a_t / a_s) * math.sqrt(1 - a_s)) * out.eps
            if callback is not None:
                callback(SamplerStep(i, K, t, x, out.x0, out.eps, x))
    return x


def reconstruct(
    model: Callable[..., Tensor],
    diffusion: Diffusion,
    latent: Tensor,
    steps: int | None = None,
    spacing: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    guidance: float | None = None,
    callback: Callback | None = None,
    clip_denoised: bool = False,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """DDIM with η = 0 from ``latent`` over the K steps :func:`invert` used: the inverse of the inversion."""
    settings, timesteps = _ddim_timesteps(diffusion, steps, spacing)
    device = model_device(model, device, latent)
    model_fn = conditioned_model_fn(model, model_kwargs, guidance, None, device, autocast_dtype)
    with eval_mode(model):
        return sample_loop(model_fn, diffusion, latent.to(device), timesteps, settings.make_step(),
                           callback=callback, clip_denoised=clip_denoised)


def slerp(a: Tensor, b: Tensor, weights: Sequence[float] | Tensor) -> Tensor:
    """Spherical interpolation per weight w: sin((1-w)θ)/sin θ · a + sin(wθ)/sin θ · b, cos θ = ⟨a, b⟩/(|a| |b|);
    linear where a and b are parallel. ``a`` and ``b`` are one tensor each; the result stacks one per weight."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    fa, fb = a.flatten().double(), b.flatten().double()
    cos = (fa @ fb / (fa.norm() * fb.norm())).clamp(-1, 1)
    theta = torch.arccos(cos)
    if float(torch.sin(theta)) < 1e-6:
        ca, cb = 1 - w, w
    else:
        ca, cb = torch.sin((1 - w) * theta) / torch.sin(theta), torch.sin(w * theta) / torch.sin(theta)
    out = ca[:, None] * fa[None] + cb[:, None] * fb[None]
    return out.reshape(len(w), *a.shape).to(a.dtype)


def interpolate(
    model: Callable[..., Tensor],
    diffusion: Diffusion,
    a: Tensor,
    b: Tensor,
    num: int,
    steps: int | None = None,
    spacing: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    guidance: float | None = None,
    clip_denoised: bool = False,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """``num`` images from ``a`` to ``b`` (each (C, H, W)): both inverted, slerp between the noises, DDIM back.

    ``model_kwargs`` hold one row (used for both inversions and every frame) or ``num`` rows.
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise DdpmkitError(f"--num must be at least 2 (the two images and what lies between), got {num}")
    if a.shape != b.shape:
        raise DdpmkitError(f"the two images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    one_row = {k: v[:1] for k, v in (model_kwargs or {}).items()}
    pair_kwargs = {k: torch.cat([v, v]) for k, v in one_row.items()}
    latents = invert(model, diffusion, torch.stack([a, b]), steps, spacing, pair_kwargs, guidance,
                     device=device, autocast_dtype=autocast_dtype)
    path = slerp(latents[0], latents[1], torch.linspace(0, 1, num))
    frame_kwargs = {k: (v if len(v) == num else v[:1].expand(num, *v.shape[1:])) for k, v in
                    (model_kwargs or {}).items()}
    return reconstruct(model, diffusion, path, steps, spacing, frame_kwargs, guidance, clip_denoised=clip_denoised,
                       device=device, autocast_dtype=autocast_dtype)
