"""Run configuration: dataclasses, YAML presets, and ``--set key=value`` overrides with type checking.

A run's resolved config is written to ``config.yaml`` in its folder, so sampling and resuming never need the
flags restated. Unknown keys and values of the wrong type are rejected with a one-line error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import atomic_write_text
from .errors import DdpmkitError


@dataclass
class DataConfig:
    name: str = "mnist"                  # a named data set, folder:PATH or cifar10:PATH
    image_size: int | None = None        # resize to this size; None keeps the native size
    hflip: bool = False                  # random horizontal flips (keep off for digits and text)


@dataclass
class ModelConfig:
    size: str = "mnist"                  # a named UNet size: tiny, mnist, cifar10, pokemon64
    overrides: dict[str, Any] = field(default_factory=dict)  # any UNetConfig field, e.g. {dropout: 0.1}
    class_conditional: bool = False      # condition on the data set's labels (num_classes from the data)


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"             # linear, cosine or sigmoid
    num_steps: int = 1000                # T
    prediction: str = "eps"              # eps, x0 or v
    variance: str = "fixed_small"        # fixed_small (β̃_t), fixed_large (β_t) or learned_range (hybrid loss)
    vlb_weight: float = 0.001            # λ of L_simple + λ L_vlb with a learned variance (Nichol & Dhariwal)
    loss_type: str = "mse"               # mse or l1
    min_snr_gamma: float | None = None   # min-SNR-γ weighting (Hang et al. 2023 use 5)
    zero_terminal_snr: bool = False      # rescale the schedule to SNR_T = 0 (needs prediction v)
    clip_denoised: bool = True           # clip x̂_0 to [-1, 1] at every sampling step (saved with the run)


@dataclass
class TrainConfig:
    steps: int | None = None             # optimizer steps; exclusive with epochs
    epochs: float | None = None          # passes over the data
    max_minutes: float | None = None     # stop this command after so many minutes (resume continues; None: no limit)
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500              # linear warm-up, then cosine decay to min_lr_ratio·lr
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0               # max gradient norm; 0 disables clipping
    grad_accum: int = 1                  # micro-batches per optimizer step
    ema_decay: float = 0.9999
    ema_warmup: bool = True              # decay_t = min(ema_decay, (1 + t)/(10 + t)) early on
    precision: str = "auto"              # auto (bf16 where native, else fp32), bf16, fp16 (GPU, GradScaler), fp32
    seed: int = 0
    device: str = "auto"                 # auto (cuda, then mps, then cpu), cpu, cuda, mps
    log_every: int = 25                  # steps between metric lines
    sample_every: int | None = None      # steps between sample grids (None: use sample_every_epochs)
    sample_every_epochs: float | None = 1.0
    checkpoint_every: int | None = None  # steps between checkpoints (None: at each sample grid)
    keep_checkpoints: int = 3            # keep the last K checkpoints
    num_samples: int = 64                # images in each sample grid
    sample_sampler: str = "ddim"
    sample_steps: int = 50
    sample_spacing: str | None = None    # timesteps of sample_sampler (None: its own); sample and eval use it too
    sample_guidance: float = 1.0         # classifier-free guidance w of the grids (conditional runs; 1: none); ditto
    sample_seed: int = 0                 # fixed, so grids are comparable across time
    tensorboard: bool = True
    fid_every: int | None = None         # steps between FIDs of EMA samples during training (None: off)
    fid_num: int = 256                   # samples per FID during training (report N: small N inflates FID)
    fid_ref_num: int = 2000              # reference images (statistics cached once)
    fid_features: str = "inception"      # inception (standard FID) or classifier (MNIST classifier, fast)
    timestep_sampler: str = "uniform"    # uniform, loss-second-moment (importance-sampled L_vlb terms), log-normal
    log_sigma_mean: float = -1.2         # log-normal: ln σ ~ N(mean, std²), σ = √((1-ᾱ)/ᾱ) (EDM's P_mean, P_std)
    log_sigma_std: float = 1.2


@dataclass
class LoRAConfig:
    base: str | None = None              # checkpoint to adapt with LoRA (None: train the whole model, no LoRA)
    rank: int = 8                        # r of W + (α/r)·B·A
    alpha: float = 8.0                   # α
    targets: tuple[str, ...] = ("attn",)  # attn, conv, mlp (see ddpmkit.lora.adapter)


@dataclass
class DistillConfig:
    """What a progressive-distillation student is (``ddpmkit distill``); ``teacher`` None: not a student."""

    teacher: str | None = None           # the checkpoint distilled (the first round's teacher)
    teacher_steps: int | None = None     # N: the DDIM steps the first round's teacher took (--from-steps)
    student_steps: int | None = None     # the DDIM steps this student was made for: the only ones it samples with
    sampler: str = "ddim"                # the student's sampler, η = 0 ...
    spacing: str = "trailing"            # ... over trailing timesteps (the grids the rounds nest)
    rounds: tuple[int, ...] = ()         # the student steps of every round, e.g. [32, 16, 8, 4]
    iters_per_round: int | None = None   # Adam steps per round
    student_batch_size: int | None = None
    student_lr: float | None = None
    wall_seconds: float = 0.0            # the distillation's time so far, over every command that ran it
    cpu_seconds: float = 0.0             # its process CPU time (all threads)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # a LoRA run: the base's UNet and diffusion are used
    distill: DistillConfig = field(default_factory=DistillConfig)  # a distilled student: what it was made for

    def to_dict(self) -> dict[str, Any]:
        spec = _plain(asdict(self))
        if self.lora.base is None:  # configs of ordinary runs stay as they were
            del spec["lora"]
        if self.distill.teacher is None:
            del spec["distill"]
        return spec

    @classmethod
    def from_dict(cls, spec: dict[str, Any], where: str = "config") -> RunConfig:
        config = cls()
        for key, value in (spec or {}).items():
            _assign(config, key, value, where)
        return config

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            spec = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise DdpmkitError(f"cannot read config {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise DdpmkitError(f"{path} is not valid YAML ({yaml_problem(exc)}); fix the file, or use the "
                               "run's checkpoint or a preset") from None
        if not isinstance(spec, dict):
            raise DdpmkitError(f"{path} is not a ddpmkit config (expected a mapping)")
        return cls.from_dict(spec, where=str(path))

    def override(self, assignments: list[str]) -> RunConfig:
        """Apply ``key=value`` strings (dotted keys, YAML values): ``train.lr=1e-3``, ``data.hflip=true``."""
        for item in assignments:
            if "=" not in item:
                raise DdpmkitError(f"--set expects key=value, got '{item}' (e.g. --set train.lr=1e-3)")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            parts = key.strip().split(".")
            if len(parts) == 1:
                section = _section_of(parts[0])
                parts = [section, parts[0]]
            if parts[0] == "model" and parts[1] not in ("size", "overrides", "class_conditional"):
                parts = ["model", "overrides", *parts[1:]]
            _assign_path(self, parts, value, key.strip())
        return self


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parser error in a few words, with where it is: ``line 3, column 11: mapping values are not allowed
    here`` (the parser's own message spans several lines of context)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{' '.join(str(problem).split())}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _section_of(name: str) -> str:
    owners = [section for section, kind in _SECTIONS.items() if name in {f.name for f in dataclasses.fields(kind)}]
    if len(owners) != 1:
        raise DdpmkitError(f"unknown config key '{name}'; use section.key, e.g. train.lr (see the preset YAML)")
    return owners[0]


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig,
             "lora": LoRAConfig, "distill": DistillConfig}


def _assign(config: RunConfig, section: str, values: Any, where: str) -> None:
    if section not in _SECTIONS:
        raise DdpmkitError(f"unknown config section '{section}' in {where}; expected {', '.join(_SECTIONS)}")
    if not isinstance(values, dict):
        raise DdpmkitError(f"'{section}' in {where} must be a mapping of keys to values")
    for key, value in values.items():
        if section == "model" and key == "overrides":
            if not isinstance(value, dict):
                raise DdpmkitError(f"model.overrides in {where} must be a mapping of UNet fields to values")
            for name, item in value.items():
                _assign_path(config, ["model", "overrides", name], item, f"model.{name}")
            continue
        _assign_path(config, [section, key], value, f"{section}.{key}")


def _assign_path(config: RunConfig, parts: list[str], value: Any, shown: str) -> None:
    section = parts[0]
    if section not in _SECTIONS:
        raise DdpmkitError(f"unknown config key '{shown}'; sections are {', '.join(_SECTIONS)}")
    target = getattr(config, section)
    if len(parts) >= 3 and section == "model" and parts[1] == "overrides":
        target.overrides[parts[2]] = _unet_field(parts[2:], value, shown)
        return
    if len(parts) != 2:
        raise DdpmkitError(f"unknown config key '{shown}'")
    names = {f.name: f for f in dataclasses.fields(target)}
    if parts[1] not in names:
        raise DdpmkitError(
            f"unknown config key '{shown}'; {section} has: {', '.join(names)}"
        )
    hints = typing.get_type_hints(type(target))
    setattr(target, parts[1], _coerce(value, hints[parts[1]], shown))


def _unet_field(parts: list[str], value: Any, shown: str) -> Any:
    """Check a model override against the UNetConfig field it sets."""
    from .models import UNetConfig

    hints = typing.get_type_hints(UNetConfig)
    if len(parts) != 1 or parts[0] not in hints:
        raise DdpmkitError(f"unknown config key '{shown}'; model keys are size, class_conditional and the UNet "
                           f"fields: {', '.join(hints)}")
    return _coerce(value, hints[parts[0]], shown)


def _coerce(value: Any, annotation: Any, shown: str) -> Any:
    """Check ``value`` against a field's type; ints are accepted for floats, lists for tuples."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, shown)
            except DdpmkitError as exc:
                errors.append(str(exc))
        raise DdpmkitError(errors[0] if errors else f"bad value for {shown}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise DdpmkitError(f"{shown} expects a list such as [1,2], got {value!r}")
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if origin is tuple and Ellipsis not in typing.get_args(annotation) and len(args) != len(value):
            raise DdpmkitError(f"{shown} expects a list of {len(args)} values, got {len(value)}: {list(value)!r}")
        return tuple(_coerce(v, args[0] if len(args) == 1 or Ellipsis in typing.get_args(annotation)
                             else args[i], shown) for i, v in enumerate(value))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise DdpmkitError(f"{shown} expects a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise DdpmkitError(f"{shown} expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DdpmkitError(f"{shown} expects an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise DdpmkitError(f"{shown} expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise DdpmkitError(f"{shown} expects a string, got {value!r}")
    return value
