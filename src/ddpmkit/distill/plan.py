"""What a distillation is, checked before any work: the teacher, the rounds, the settings, and where it is written.

:func:`plan_distillation` turns the command's arguments into a :class:`DistillPlan` or a one-line
:class:`~ddpmkit.errors.DdpmkitError`: a RUN that is not a run, a LoRA run (merge it first), a teacher with a learned
variance, a step count that halving cannot reach, an --out that holds anything but this same distillation. Reading
the teacher's metadata is all it does; nothing is created.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import check_writable
from ..config import DistillConfig, RunConfig
from ..errors import DdpmkitError
from ..request import student_steps
from ..run import RunFolder, RunInfo
from .method import halving_rounds, round_grids

# Defaults sized for the default job (the mnist preset: a 1.19M-parameter v-prediction UNet, 2,600 training steps of
# 32, 13-15 minutes on a 2-core CPU), measured on /work/runs/mnist on an idle 2-core Intel Xeon with AMX, bf16, 2
# threads: a distillation iteration of 32 (two teacher evaluations, one student step) 0.31 s against a training step's
# 0.19-0.20 s, so 1.6 training steps. `ddpmkit distill runs/mnist --steps 4` then runs 3 rounds (32 -> 16 -> 8 -> 4
# steps) of 900 iterations, 2,700 in all: 1.6 x 2,700 / 2,600 = 1.7 times the training time, about 23 minutes where
# training takes 14, within twice. Three longer rounds rather than four of 675 from 64 steps (a judgement, not
# measured: each round starts from the previous student's errors, so fewer rounds leave fewer to compound).
DEFAULT_FROM_STEPS = 32
DEFAULT_ITERS_PER_ROUND = 900
# The lr, screened on the same run (held-out distillation loss of the EMA student on 512 test images): round 32 -> 16
# after 200 iterations 9.22e-5 (lr 5e-5), 9.32e-5 (1e-4), 1.06e-4 (2e-4), 1.62e-4 (4e-4), from 3.92e-4; round 8 -> 4
# (the hardest, teacher's 8 steps) after 400: 2.87e-4 (5e-5), 2.64e-4 (1e-4), 2.85e-4 (2e-4), from 2.94e-3.
DEFAULT_LR = 1e-4
CHECKPOINT_EVERY = 200  # iterations between checkpoints (and one at the end of every round)


@dataclass(frozen=True)
class DistillSettings:
    """What makes two distillations the same one (a second command continues the first only if these agree)."""

    teacher: str          # the teacher checkpoint, an absolute path
    from_steps: int       # N: the first teacher's DDIM steps
    rounds: tuple[int, ...]
    iters_per_round: int
    batch_size: int
    lr: float

    @property
    def steps(self) -> int:
        return self.rounds[-1]

    def config(self, teacher: RunConfig, n: int, wall_seconds: float = 0.0, cpu_seconds: float = 0.0) -> RunConfig:
        """The config of a student of ``n`` steps: the teacher's (data, model, diffusion, training record), sampling
        with DDIM over its n trailing steps, and the distillation it came from."""
        config = RunConfig.from_dict(teacher.to_dict())
        config.train.sample_sampler, config.train.sample_steps, config.train.sample_spacing = "ddim", n, "trailing"
        config.distill = DistillConfig(
            teacher=self.teacher, teacher_steps=self.from_steps, student_steps=n, rounds=self.rounds,
            iters_per_round=self.iters_per_round, student_batch_size=self.batch_size, student_lr=self.lr,
            wall_seconds=round(wall_seconds, 1), cpu_seconds=round(cpu_seconds, 1))
        return config

    @classmethod
    def of(cls, config: RunConfig) -> DistillSettings | None:
        d = config.distill
        if d.teacher is None:
            return None
        return cls(d.teacher, int(d.teacher_steps), tuple(d.rounds), int(d.iters_per_round),
                   int(d.student_batch_size), float(d.student_lr))


@dataclass(frozen=True)
class DistillPlan:
    """A checked distillation: the teacher's checkpoint and metadata, the settings, and the folder it goes to."""

    checkpoint: Path         # the teacher
    info: RunInfo
    settings: DistillSettings
    out: RunFolder
    resume: Path | None      # the newest checkpoint of this same distillation in --out, or None for a new one


def check_teacher(checkpoint: Path, info: RunInfo) -> None:
    """Refuse teachers a student cannot be distilled from: LoRA runs, a learned variance, runs without a config."""
    if info.lora:
        base = info.lora.get("base_checkpoint", "BASE")
        adapter = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
        raise DdpmkitError(f"{checkpoint} is a LoRA run (adapters on a frozen base); merge it into a standalone run "
                           f"first with `ddpmkit lora merge {base} {adapter} --out MERGED` and distil that")
    if info.diffusion.learns_variance:
        raise DdpmkitError(f"{checkpoint} learns its variance (diffusion.variance=learned_range); a student takes "
                           "deterministic DDIM steps (η = 0), which use the mean alone and have no place for a "
                           "variance: distil a run with a fixed variance")
    if info.config is None:
        raise DdpmkitError(f"{checkpoint} holds no run config (its data and settings); distil a run trained by "
                           "this version of ddpmkit")


def resolve_from_steps(info: RunInfo, from_steps: int | None) -> int:
    """N: the teacher's own grid for a student teacher, else ``from_steps`` or the default (at most T)."""
    T = info.diffusion.num_steps
    own = student_steps(info)
    if own is not None:
        if from_steps is not None and from_steps != own:
            raise DdpmkitError(f"{info.checkpoint} is a student made for {own} DDIM steps: it teaches with {own} "
                               f"steps, not --from-steps {from_steps}; drop --from-steps")
        return own
    if from_steps is None:
        return min(DEFAULT_FROM_STEPS, 2 ** int(math.log2(T)))
    if isinstance(from_steps, bool) or not isinstance(from_steps, int) or not 2 <= from_steps <= T:
        raise DdpmkitError(f"--from-steps must be between 2 and {T} (the teacher's T), got {from_steps}")
    return from_steps


def plan_distillation(run: str | Path, steps: int, out: str | Path, from_steps: int | None = None,
                      iters_per_round: int | None = None, batch_size: int | None = None, lr: float | None = None,
                      resume: bool = False) -> DistillPlan:
    """Check everything a distillation of ``run`` to ``steps`` DDIM steps into ``out`` needs; read-only.

    An ``out`` holding this same distillation (same teacher checkpoint, rounds and settings) is continued; with
    ``resume`` the settings left out (None) are the ones it was started with."""
    if not str(out).strip():
        raise DdpmkitError("--out: an empty path would write into the current folder; pass a folder such as "
                           "runs/NAME")
    folder, checkpoint = RunFolder.locate(run)
    info = folder.info(checkpoint)
    check_teacher(checkpoint, info)
    out_run = RunFolder(Path(out))
    check_writable(out_run.path, "dir", "--out")
    previous = _previous(out_run, resume)
    if resume and previous is not None:  # flags left out: as the distillation was started
        iters_per_round = previous.iters_per_round if iters_per_round is None else iters_per_round
        batch_size = previous.batch_size if batch_size is None else batch_size
        lr = previous.lr if lr is None else lr
        from_steps = previous.from_steps if from_steps is None and student_steps(info) is None else from_steps
    n = resolve_from_steps(info, from_steps)
    rounds = halving_rounds(n, steps)
    for student in rounds:
        round_grids(info.diffusion.num_steps, student)
    iters_per_round = DEFAULT_ITERS_PER_ROUND if iters_per_round is None else iters_per_round
    batch_size = info.config.train.batch_size if batch_size is None else batch_size
    lr = DEFAULT_LR if lr is None else lr
    for flag, value in (("--iters-per-round", iters_per_round), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DdpmkitError(f"{flag} must be a whole number >= 1, got {value}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise DdpmkitError(f"--lr must be a finite number > 0, got {lr}")
    settings = DistillSettings(os.path.abspath(checkpoint), n, tuple(rounds), iters_per_round, batch_size, float(lr))
    if previous is None:
        if out_run.has_checkpoints():
            raise DdpmkitError(f"--out {out_run.path} already holds a run that is not a distillation; pass another "
                               "--out")
        out_run.check_new_run_folder()
        out_run.check_no_writer()
        return DistillPlan(checkpoint, info, settings, out_run, None)
    if previous != settings:
        raise DdpmkitError(f"--out {out_run.path} holds another distillation ({_difference(previous, settings)}); "
                           "rerun its own command to continue it, or pass another --out")
    out_run.check_no_writer()
    return DistillPlan(checkpoint, info, settings, out_run, out_run.latest_checkpoint())


def _previous(out: RunFolder, resume: bool) -> DistillSettings | None:
    """The settings of the distillation in ``out`` (None when it holds none); --resume needs one."""
    if not out.has_checkpoints():
        if resume:
            raise DdpmkitError(f"--resume: {out.path} holds no distillation to continue; drop --resume to start one")
        return None
    config = RunInfo.read(out.latest_checkpoint()).config
    return DistillSettings.of(config) if config is not None else None


def _difference(was: DistillSettings, now: DistillSettings) -> str:
    """The first setting that differs, as ``--lr 0.0002 there, 0.0001 now``."""
    names = {"teacher": "teacher", "from_steps": "--from-steps", "rounds": "rounds", "iters_per_round":
             "--iters-per-round", "batch_size": "--batch-size", "lr": "--lr"}
    for field in dataclasses.fields(DistillSettings):
        a, b = getattr(was, field.name), getattr(now, field.name)
        if a != b:
            show = (lambda v: "→".join(map(str, v))) if field.name == "rounds" else str
            return f"{names[field.name]} {show(a)} there, {show(b)} now"
    return "the same settings"
