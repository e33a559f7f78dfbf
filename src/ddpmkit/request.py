"""A sampling request: what to generate, checked once and then passed along unchanged.

The command line, the demo, ``evaluate_run`` and :meth:`ddpmkit.pipeline.Pipeline.generate` all say what they want
as a :class:`SampleRequest`. Making one checks what needs no run (counts, η, guidance, labels are integers);
:meth:`SampleRequest.resolve` then fills in what the caller left out from the run's recommendations
(:class:`~ddpmkit.run.RunInfo`: its grid sampler, steps, spacing and guidance) and the sampler's own defaults
(:data:`~ddpmkit.sampling.SAMPLER_REGISTRY`), and checks the rest against the run (steps ≤ T, labels within its
classes, guidance only where there are labels; a distilled student only with the DDIM steps it was made for). No
weights are read to do so, and nothing is checked again later.

>>> request = SampleRequest(num=16, sampler="ddim", steps=50, seed=0)          # doctest: +SKIP
>>> images = Pipeline.from_run("runs/mnist").generate(request)                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import DdpmkitError
from .run import RunInfo
from .sampling import SamplerSettings, check_sampler_args

Labels = Sequence[int] | torch.Tensor | np.ndarray | int


@dataclass(frozen=True)
class SampleRequest:
    """What to generate. ``None`` means "as the run recommends" (sampler, steps, spacing, clipping, guidance) or,
    for ``labels`` on a class-conditional run, class-balanced labels 0, 1, …, K−1 in turn (the null label alone would
    draw the far weaker unconditional model: ask for that with ``guidance=0``). ``labels`` is one label for every
    image or one per image; ``conditions`` holds any other model keyword argument, one row per image.

    The initial noise comes from one generator seeded with ``seed`` and is drawn for all images up front, so the
    deterministic samplers (DDIM with η = 0, DPM-Solver++, UniPC) give the same images whatever the batch size.
    """

    num: int = 64
    sampler: str | None = None
    steps: int | None = None
    spacing: str | None = None
    eta: float = 0.0
    clip_denoised: bool | None = None
    labels: tuple[int, ...] | None = None
    guidance: float | None = None
    seed: int = 0
    batch_size: int = 256
    conditions: Mapping[str, torch.Tensor] | None = None
    resolved: bool = False  # set by resolve(): every field is concrete and checked against the run

    def __post_init__(self) -> None:
        """The checks that need no run."""
        if not _is_int(self.num) or not _is_int(self.batch_size) or self.num < 1 or self.batch_size < 1:
            raise DdpmkitError(f"--num and --batch-size must be at least 1 (got {self.num} and {self.batch_size})")
        if self.guidance is not None and not (_is_number(self.guidance) and math.isfinite(self.guidance)
                                              and self.guidance >= 0):
            raise DdpmkitError(f"--guidance must be a finite number >= 0 (0 unconditional, 1 conditional), "
                               f"got {self.guidance}")
        if not _is_number(self.eta) or not 0.0 <= self.eta <= 1.0:
            raise DdpmkitError(f"eta must be in [0, 1], got {self.eta}")
        if not _is_int(self.seed):
            raise DdpmkitError(f"the seed must be a whole number, got {self.seed!r}")
        if self.labels is not None:
            object.__setattr__(self, "labels", _as_labels(self.labels))

    # ----- against a run --------------------------------------------------------------------------------------

    def resolve(self, info: RunInfo) -> SampleRequest:
        """This request with every default filled in from the run and the sampler, checked against the run."""
        if self.resolved:
            return self
        run_sampler, run_steps, run_spacing = info.sampler
        sampler, steps, spacing = self.sampler or run_sampler, self.steps, self.spacing
        if sampler == run_sampler:  # the run's own sampler: its steps and spacing unless the caller says otherwise
            steps = run_steps if steps is None else steps
            spacing = spacing or run_spacing
        settings = check_sampler_args(sampler, steps, self.eta, info.diffusion.num_steps, spacing)

        where = info.checkpoint or "this run"
        _check_student(settings, info, where)
        k = info.num_classes
        labels = self.labels
        if labels is not None and k is None:
            raise DdpmkitError(f"{where} is an unconditional run: labels need a class-conditional model; "
                               "drop --labels")
        if labels is not None and (len(labels) not in (1, self.num) or min(labels) < 0 or max(labels) >= k):
            raise DdpmkitError(f"labels must be 1 or {self.num} values in 0..{k - 1}")
        if labels is None and k is not None and "labels" not in (self.conditions or {}):
            labels = tuple(i % k for i in range(self.num))
        elif labels is not None and len(labels) == 1:
            labels = labels * self.num
        guidance = self.guidance
        if guidance is not None and guidance != 1.0 and k is None and not self.conditions:
            raise DdpmkitError(f"{where} is an unconditional run: --guidance needs a class-conditional model; "
                               "drop --guidance")
        if guidance is None and labels is not None:
            guidance = info.guidance  # the run's recommendation (1 unless its preset says otherwise)
        for name, value in (self.conditions or {}).items():
            if len(value) != self.num:
                raise DdpmkitError(f"condition {name!r} has {len(value)} rows for {self.num} images")
        _check_memory(self.num, info)
        clip = info.diffusion.clip_denoised if self.clip_denoised is None else bool(self.clip_denoised)
        return dataclasses.replace(self, sampler=settings.sampler, steps=settings.steps, spacing=settings.spacing,
                                   eta=settings.eta, labels=labels, guidance=guidance, clip_denoised=clip,
                                   resolved=True)

    # ----- what a resolved request gives --------------------------------------------------------------------------

    @property
    def settings(self) -> SamplerSettings:
        self._require_resolved()
        return SamplerSettings(self.sampler, self.steps, self.spacing, self.eta)

    def model_kwargs(self, device: torch.device | str | None = None) -> dict[str, Any]:
        """The model's keyword arguments for all ``num`` images: the labels and any other conditions."""
        self._require_resolved()
        kwargs = dict(self.conditions or {})
        if self.labels is not None:
            kwargs["labels"] = torch.tensor(self.labels, dtype=torch.long)
        return {k: v.to(device) if device is not None else v for k, v in kwargs.items()}

    def describe(self) -> str:
        """``ddpm, 50 steps, linspace spacing, guidance 1``: what was sampled, for a report line."""
        self._require_resolved()
        guided = f", guidance {self.guidance:g}" if self.labels is not None and self.guidance is not None else ""
        return f"{self.sampler}, {self.steps} steps, {self.spacing} spacing{guided}"

    def _require_resolved(self) -> None:
        if not self.resolved:
            raise ValueError("resolve the request against a run first: request.resolve(run_info)")


def student_steps(info: RunInfo) -> int | None:
    """The DDIM steps a distilled student (``ddpmkit distill``) was made for; None for any other run."""
    distill = info.config.distill if info.config is not None else None
    return distill.student_steps if distill is not None and distill.teacher is not None else None


def _check_student(settings: SamplerSettings, info: RunInfo, where: object) -> None:
    """A distilled student learned one map: DDIM (η = 0) over its K trailing timesteps, each step standing for two
    of its teacher's. Any other sampler, step count or spacing is refused."""
    k = student_steps(info)
    if k is None:
        return
    made_for = ("ddim", k, "trailing", 0.0)
    if (settings.sampler, settings.steps, settings.spacing, settings.eta) != made_for:
        asked = f"{settings.sampler} with {settings.steps} {settings.spacing} steps"
        asked += f" and eta {settings.eta:g}" if settings.eta else ""
        raise DdpmkitError(f"{where} is a distilled student made for DDIM (eta 0) over {k} trailing steps, not "
                           f"{asked}; sample it with --sampler ddim --steps {k} --spacing trailing (its defaults)")


# Bytes per pixel value that generating holds for every image at once: the initial noise (drawn up front, so that
# images do not depend on the batch size), the batches' samples, their concatenation and its clamped copy (float32
# each), and the uint8 result.
BYTES_PER_VALUE = 17


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _check_memory(num: int, info: RunInfo) -> None:
    """Refuse a request whose images (and their noise) alone would not fit in this machine's memory."""
    unet = info.unet
    need = num * unet.in_channels * unet.image_size ** 2 * BYTES_PER_VALUE
    have = physical_memory()
    if have is not None and need > have:
        raise DdpmkitError(f"--num {num} would hold {_size(need)} of noise and images in memory at once ({num} images "
                           f"of {unet.in_channels}×{unet.image_size}×{unet.image_size}), more than this machine has; "
                           "ask for fewer, in several commands with different --seed")


def _size(count: float) -> str:
    """1234567 -> "1.2 MB"."""
    unit = "bytes"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            break
        count /= 1000
    return f"{count:.0f} bytes" if unit == "bytes" else f"{count:.1f} {unit}"


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _as_labels(labels: Labels) -> tuple[int, ...]:
    values = torch.as_tensor(labels).flatten().tolist() if not isinstance(labels, int) else [labels]
    if not values or not all(_is_int(v) for v in values):
        raise DdpmkitError(f"labels must be whole numbers, got {labels!r}")
    return tuple(int(v) for v in values)
