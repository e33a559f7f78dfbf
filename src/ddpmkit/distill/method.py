"""The math of progressive distillation (Salimans & Ho 2022, algorithm 2) in this project's discrete-time notation.

With α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t) and z_t = α_t x + σ_t ε, a round distils a teacher's DDIM sampler (η = 0) over the
2n trailing timesteps u_0 > u_1 > … > u_{2n-1} into a student over the n trailing timesteps s_0 > … > s_{n-1}. The
grids are nested, s_j = u_{2j} (:func:`round_grids` checks it), so from a student point t = s_j the teacher takes two
DDIM steps t → t' = u_{2j+1} → t'' = u_{2j+2} (t'' = clean after the last point: α = 1, σ = 0), each

    z_s = α_s x̂ + σ_s ε̂,   ε̂ = (z_t - α_t x̂) / σ_t                      (DDIM, Song et al. 2021, eq. 12, η = 0)

and the student's target is the x̃ whose one DDIM step t → t'' lands on the teacher's z_{t''} (algorithm 2):

    x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t),

which is the teacher's final output z_{t''} itself at the last step (σ_{t''} = 0, α_{t''} = 1). The loss is

    L = w(λ_t) ‖x̂_θ(z_t) - x̃‖²,   w = max(α_t²/σ_t², 1) = max(SNR_t, 1)

("truncated SNR" weighting, Salimans & Ho 2022, section 4), with t drawn uniformly from the student's n points
(algorithm 2) and x̂_θ derived from the student's own parameterisation (ε, x₀ or v) by the diffusion's functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..diffusion import Diffusion
from ..errors import DdpmkitError
from ..sampling import timestep_spacing

CLEAN = -1  # the "timestep" after the last one: the clean image, ᾱ = 1 (α = 1, σ = 0)


def halving_rounds(from_steps: int, steps: int) -> list[int]:
    """The student step counts of the rounds N → N/2 → … → K (algorithm 2 halves the steps every round):
    [N/2, N/4, …, K]; a one-line error naming the reachable counts when K is not N/2^r for some r ≥ 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DdpmkitError(f"--steps must be a whole number >= 1 (the student's DDIM steps), got {steps}")
    reachable, n = [], from_steps
    while n % 2 == 0:
        n //= 2
        reachable.append(n)
    if steps not in reachable:
        shown = ", ".join(map(str, reachable)) or "none: it is odd"
        raise DdpmkitError(f"--steps {steps} cannot be reached from {from_steps} steps by halving (reachable: "
                           f"{shown}); pick one of those, or --from-steps {steps} times a power of two")
    return reachable[:reachable.index(steps) + 1]


def round_grids(num_train_steps: int, student_steps: int) -> tuple[Tensor, Tensor]:
    """(the student's n trailing timesteps, the teacher's 2n), both descending from T - 1; an error unless every
    student point is a teacher point (s_j = u_{2j}), which the two-steps-for-one target needs."""
    student = timestep_spacing(num_train_steps, student_steps, "trailing")
    teacher = timestep_spacing(num_train_steps, 2 * student_steps, "trailing")
    if not torch.equal(teacher[0::2], student):
        raise DdpmkitError(f"the trailing grids of {student_steps} and {2 * student_steps} steps of T = "
                           f"{num_train_steps} are not nested (rounding moves a {student_steps}-step point off the "
                           f"{2 * student_steps}-step grid), so that round cannot be distilled; pick another "
                           "--from-steps or --steps")
    return student, teacher


def two_step_times(student: Tensor, teacher: Tensor, j: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(t, t', t'') for student grid indices j: t = s_j = u_{2j}, t' = u_{2j+1}, t'' = u_{2j+2} or CLEAN."""
    padded = torch.cat([teacher, torch.tensor([CLEAN], dtype=teacher.dtype)])
    return student[j], padded[2 * j + 1], padded[2 * j + 2]


def alpha_sigma(diffusion: Diffusion, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(α_t, σ_t) per sample, broadcastable against ``like``, in its dtype; t = CLEAN gives (1, 0)."""
    abar, t = diffusion.schedule.alphas_cumprod.to("cpu", torch.float64), t.cpu()
    values = torch.where(t < 0, torch.ones((), dtype=torch.float64), abar[t.clamp(min=0)])
    shape = (t.shape[0], *([1] * (like.dim() - 1)))
    alpha, sigma = values.sqrt(), (1.0 - values).clamp(min=0).sqrt()
    return alpha.to(like).reshape(shape), sigma.to(like).reshape(shape)


def denoised(diffusion: Diffusion, output: Tensor, z: Tensor, t: Tensor, clip: bool) -> tuple[Tensor, Tensor]:
    """(x̂, ε̂) from a model output at (z, t) in the model's parameterisation; with ``clip`` x̂ is clipped to [-1, 1]
    and ε̂ recomputed from it, as the sampler does for a run that clips."""
    prediction = diffusion.split_output(output, z.shape[1]).to(z.dtype)
    x0, eps = diffusion.predict_x0_eps(prediction, z, t)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = diffusion.eps_from_x0(z, t, x0)
    return x0, eps


def ddim_to(diffusion: Diffusion, x0: Tensor, eps: Tensor, s: Tensor) -> Tensor:
    """One deterministic DDIM step's result at timesteps s (per sample): z_s = α_s x̂ + σ_s ε̂ (x̂ at s = CLEAN)."""
    alpha, sigma = alpha_sigma(diffusion, s, x0)
    return alpha * x0 + sigma * eps


ModelFn = Callable[[Tensor, Tensor], Tensor]


def teacher_target(teacher: ModelFn, diffusion: Diffusion, z: Tensor, t: Tensor, t1: Tensor, t2: Tensor,
                   clip: bool = False) -> Tensor:
    """x̃: two teacher DDIM steps z_t → z_{t'} → z_{t''}, then the x̂ whose one step t → t'' gives z_{t''}.

    ``teacher(z, t)`` returns the model output (with its condition bound); arithmetic is in z's dtype."""
    x0, eps = denoised(diffusion, teacher(z, t).to(z.dtype), z, t, clip)
    z1 = ddim_to(diffusion, x0, eps, t1)
    x0, eps = denoised(diffusion, teacher(z1, t1).to(z.dtype), z1, t1, clip)
    z2 = ddim_to(diffusion, x0, eps, t2)
    return target_from(diffusion, z, t, z2, t2)


def target_from(diffusion: Diffusion, z: Tensor, t: Tensor, z2: Tensor, t2: Tensor) -> Tensor:
    """x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t) (algorithm 2); z_{t''} where t'' = CLEAN."""
    alpha, sigma = alpha_sigma(diffusion, t, z)
    alpha2, sigma2 = alpha_sigma(diffusion, t2, z)
    ratio = sigma2 / sigma
    return (z2 - ratio * z) / (alpha2 - ratio * alpha)


def truncated_snr_weight(diffusion: Diffusion, t: Tensor) -> Tensor:
    """w(λ_t) = max(SNR_t, 1), SNR_t = ᾱ_t/(1 - ᾱ_t) (Salimans & Ho 2022, section 4: "truncated SNR")."""
    snr = diffusion.schedule.snr.to("cpu", torch.float64)[t.cpu()]
    return snr.clamp(min=1.0).float().to(t.device)


def distill_loss(student: Callable[..., Tensor], teacher: Callable[..., Tensor], diffusion: Diffusion, x: Tensor,
                 eps: Tensor, j: Tensor, grids: tuple[Tensor, Tensor], model_kwargs: Mapping[str, Any] | None = None,
                 autocast: Callable[[], Any] | None = None) -> Tensor:
    """The scalar loss of one batch: z_t = α_t x + σ_t ε at student grid points j, the teacher's x̃ (no gradient),
    and mean over the batch of w(λ_t) · mean over pixels of (x̂_θ(z_t) - x̃)².

    ``student``/``teacher`` are ``model(z, t, **model_kwargs)``; ``autocast()`` (e.g. bf16) wraps the model calls
    while the DDIM arithmetic and the loss stay in float32."""
    kwargs = dict(model_kwargs or {})
    amp = autocast or contextlib.nullcontext
    t, t1, t2 = (v.to(x.device) for v in two_step_times(*grids, j.cpu()))
    alpha, sigma = alpha_sigma(diffusion, t, x)
    z = alpha * x + sigma * eps
    with torch.no_grad():
        def teacher_fn(z_: Tensor, t_: Tensor) -> Tensor:
            with amp():
                return teacher(z_, t_, **kwargs).float()

        target = teacher_target(teacher_fn, diffusion, z, t, t1, t2, clip=diffusion.clip_denoised)
    with amp():
        output = student(z, t, **kwargs)
    x_hat, _ = denoised(diffusion, output.float(), z, t, clip=False)
    per_sample = (x_hat - target).pow(2).flatten(1).mean(dim=1)
    return (truncated_snr_weight(diffusion, t) * per_sample).mean()
