"""``ddpmkit distill RUN --steps K --out RUN2``: progressive distillation of a run into a K-step DDIM student.

The parser's flags are added here (:func:`add_arguments`) to the command line's own one-line-error parser, and
:func:`distill_command` runs them: every check before any work (:func:`~ddpmkit.distill.plan.plan_distillation`),
then the rounds, then where the student is and how to sample it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .plan import DEFAULT_FROM_STEPS, DEFAULT_ITERS_PER_ROUND, DEFAULT_LR, plan_distillation

DESCRIPTION = ("Progressive distillation (Salimans & Ho 2022): train a student that takes one DDIM step where its "
               "teacher took two, then let it teach the next, halving the steps each round from --from-steps down "
               "to --steps. RUN2 is a run for sample, eval, demo and Pipeline that samples with DDIM over its K "
               "trailing steps (and only those); it keeps every round's student. Rerunning the same command (or "
               "--resume) continues an interrupted distillation exactly.")


def _out_folder(text: str) -> Path:
    """--out's type: an empty path (the current folder) is refused, as for train and lora."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path would write into the current folder; pass a folder such as "
                                         "runs/NAME")
    return Path(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="the teacher: a run folder (its newest checkpoint's EMA weights) or a "
                                          "checkpoint folder; a distilled student teaches with its own steps")
    p.add_argument("--steps", type=int, required=True, metavar="K", help="the student's DDIM steps: --from-steps "
                                                                          "halved one or more times")
    p.add_argument("--out", type=_out_folder, required=True, metavar="RUN2", help="the student's run folder")
    p.add_argument("--from-steps", type=int, metavar="N",
                   help=f"the first teacher's DDIM steps (default {DEFAULT_FROM_STEPS}, at most T; a student "
                        "teacher: its own)")
    p.add_argument("--iters-per-round", type=int, metavar="M",
                   help=f"Adam steps per round (default {DEFAULT_ITERS_PER_ROUND})")
    p.add_argument("--batch-size", type=int, metavar="B", help="images per iteration (default: the teacher's)")
    p.add_argument("--lr", type=float, help=f"Adam's learning rate (default {DEFAULT_LR:g})")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 where the hardware runs it natively, else fp32")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--resume", action="store_true",
                   help="continue the distillation in --out (the flags left out: as it was started)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def distill_command(args: argparse.Namespace) -> int:
    from ..device import autocast_dtype, select_device
    from .trainer import Distiller

    plan = plan_distillation(args.run, args.steps, args.out, from_steps=args.from_steps,
                             iters_per_round=args.iters_per_round, batch_size=args.batch_size, lr=args.lr,
                             resume=args.resume)
    autocast_dtype(args.precision, select_device(args.device))  # a device or precision that is not there: now
    s = plan.settings
    distiller = Distiller(plan, device=args.device, precision=args.precision, progress=not args.no_progress)
    where = f"resuming {plan.resume} at iteration {distiller.done}" if plan.resume else "new run"
    print(f"ddpmkit distill: {plan.checkpoint} ({s.from_steps} DDIM steps) -> {s.steps} steps in "
          f"{len(s.rounds)} rounds ({' → '.join(map(str, (s.from_steps, *s.rounds)))}) of {s.iters_per_round} "
          f"iterations of {s.batch_size}, lr {s.lr:g}, on {distiller.device} ({distiller.precision}) -> "
          f"{plan.out.path} ({where})", flush=True)
    start = time.perf_counter()
    result = distiller.fit()
    print(f"distilled {s.from_steps} → {s.steps} DDIM steps in {time.perf_counter() - start:.0f} s "
          f"({result.wall_seconds / 60:.1f} min over every command, {result.cpu_seconds / 60:.1f} CPU min); "
          f"student: {result.checkpoint}")
    print(f"sample it with: ddpmkit sample {plan.out.path}   (DDIM, {s.steps} trailing steps: the only ones it "
          f"takes); score it with: ddpmkit eval {plan.out.path} --sampler ddim --steps {s.steps}")
    return 0
