"""What every command's argument parsing shares: one-line usage errors, and the training flags of train and lora."""

from __future__ import annotations

import argparse
from typing import NoReturn

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (and exit status 2), like every other ddpmkit error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_training_flags(p: argparse.ArgumentParser, steps_help: str = "optimizer steps") -> None:
    """The flags ``train`` and ``lora`` share; :func:`flag_assignments` turns them into config overrides."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, help=steps_help)
    group.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--max-minutes", type=float,
                   help="stop this command after so many minutes, saving as at the end (--resume continues)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.ema_decay=0.999 --set model.dropout=0.1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def flag_assignments(args: argparse.Namespace) -> list[str]:
    """The training flags shared by ``train`` and ``lora`` as ``key=value`` config overrides, then ``--set``."""
    flags = {"data.name": args.data, "train.batch_size": args.batch_size, "train.lr": args.lr,
             "train.precision": args.precision, "train.device": args.device, "train.seed": args.seed,
             "train.max_minutes": args.max_minutes}
    assignments = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.steps is not None:
        assignments += [f"train.steps={args.steps}", "train.epochs=null"]
    if args.epochs is not None:
        assignments += [f"train.epochs={args.epochs}", "train.steps=null"]
    return assignments + list(args.overrides)
