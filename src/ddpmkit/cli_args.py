"""What every command's argument parsing shares: one-line usage errors, and the training flags of train and lora."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

EXIT_USER_ERROR = 2


def out_folder(text: str) -> Path:
    """``--out``'s type: a folder path; an empty one (which would mean the current folder) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path would write into the current folder; pass a folder such as "
                                         "runs/NAME")
    return Path(text)


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
    add_distributed_flags(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.ema_decay=0.999 --set model.dropout=0.1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept settings that differ from the checkpoint's (lr, weight decay, betas, "
                        "EMA, precision, ...); the continuation is then no longer the run that was interrupted")


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


def check_resume_changes(args: argparse.Namespace, config, checkpoint) -> list[str]:
    """Before resuming ``checkpoint`` with ``config``: refuse settings changed against the checkpoint's (what
    :func:`ddpmkit.training.builders.resume_changes` reports beyond the run's length) unless ``--allow-changes``;
    returns the note lines to print once the run is under way (nothing changed: none)."""
    from .errors import DdpmkitError
    from .run import RunInfo
    from .training.builders import resume_changes

    length, other = resume_changes(RunInfo.read(checkpoint).config, config)
    if other and not args.allow_changes:
        raise DdpmkitError(f"resuming {checkpoint} with {', '.join(other)} would continue another run than the one "
                           "that was interrupted; drop the change, pass --allow-changes to continue anyway, or start a "
                           "new run with --out")
    if other:
        return [f"ddpmkit: note: resuming {checkpoint} with {', '.join(length + other)}: the continuation is no "
                "longer the same run as an uninterrupted one (config.yaml now holds the new settings)"]
    if length:
        return [f"ddpmkit: note: resuming {checkpoint} with {', '.join(length)}: the learning-rate schedule now "
                "decays to the new last step, so the steps from here follow another schedule than the original run's"]
    return []


def print_notes(notes: list[str]) -> None:
    for note in notes:
        print(note, file=sys.stderr, flush=True)


# ----- several processes: torchrun ---------------------------------------------------------------------------------

def add_distributed_flags(p: argparse.ArgumentParser) -> None:
    """``--nproc`` (and, across machines, ``--nnodes``/``--rdzv-endpoint``) start torchrun's agent for this command;
    ``--dist-backend`` and ``--dist-timeout`` also apply to a process started by ``torchrun ... -m ddpmkit``."""
    group = p.add_argument_group("several processes (DistributedDataParallel through torchrun; docs/distributed.md)")
    group.add_argument("--nproc", type=int, metavar="N",
                       help="train in N processes on this machine (one per GPU, or per CPU core): starts torchrun's "
                            "agent; --batch-size stays the global batch, split across all processes")
    group.add_argument("--nnodes", type=int, default=1, metavar="M",
                       help="with --nproc: M machines, each started with the same command and --rdzv-endpoint")
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                       help="with --nnodes: where the machines meet (the first machine's address and a free port)")
    group.add_argument("--dist-backend", choices=("auto", "gloo", "nccl"), default="auto",
                       help="collective backend: auto (NCCL on CUDA GPUs, gloo on CPUs)")
    group.add_argument("--dist-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="how long the processes wait for each other to start before failing with one line "
                            "(default 300)")


def distributed_options(args: argparse.Namespace):
    """The :class:`~ddpmkit.training.distributed.DistributedOptions` of the flags."""
    from .training.distributed import DistributedOptions

    if not args.dist_timeout > 0:
        from .errors import DdpmkitError

        raise DdpmkitError(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout}")
    return DistributedOptions(backend=args.dist_backend, timeout=args.dist_timeout)


def launch_processes(args: argparse.Namespace, argv: list[str], device: str, batch_size: int,
                     run_dir: Path | None) -> int | None:
    """With ``--nproc``: check the launch (devices or cores, the batch split, the backend), then run this command
    (``argv``, without the launch flags) in that many processes through torchrun's agent and return its exit
    status. None: run in this process."""
    from .errors import DdpmkitError

    if args.nproc is None:
        if args.nnodes != 1 or args.rdzv_endpoint:
            raise DdpmkitError("--nnodes and --rdzv-endpoint go with --nproc N (processes on each machine)")
        return None
    from .training.distributed import check_launch, launch, strip_launch_flags, under_launcher

    if under_launcher():
        raise DdpmkitError("--nproc starts torchrun's agent, but this process already runs under torchrun (RANK and "
                           "WORLD_SIZE are set); drop --nproc")
    check_launch(args.nproc, device, batch_size, args.dist_backend, args.nnodes)
    distributed_options(args)
    if args.nproc * args.nnodes == 1:
        return None
    return launch(strip_launch_flags(argv), args.nproc, args.nnodes, args.rdzv_endpoint, args.dist_timeout, run_dir)


def start_training(args: argparse.Namespace, config, run_dir: Path, resume_path: Path | None):
    """What train and lora do once their config is resolved: the resume checks, then either the ``--nproc``
    processes (returns their exit status), or this process's Trainer. Under torchrun a rank other than 0 trains
    here and returns 0 (rank 0 speaks for the run); rank 0 gets the Trainer, after the resume notes."""
    from .training import Trainer
    from .training.distributed import parallel_errors, teardown

    notes = check_resume_changes(args, config, resume_path) if resume_path else []
    launched = launch_processes(args, args.argv, config.train.device, config.train.batch_size, run_dir)
    if launched is not None:  # --nproc N: this process was torchrun's agent for N processes of this command
        return launched
    with parallel_errors():  # another process dying under torchrun: one line
        trainer = Trainer(config, run_dir, resume=resume_path, progress=not args.no_progress,
                          distributed=distributed_options(args))
        if trainer.parallel.rank > 0:
            trainer.fit()
            teardown()
            return 0
    print_notes(notes)
    return trainer


def report_error(exc: Exception) -> bool:
    """Whether this process prints ``exc`` (one line): always, except in a process of a distributed run that is
    not rank 0 (or under ``--nproc``, whose agent prints the first failure) and whose error is the same everywhere."""
    import os

    if "WORLD_SIZE" not in os.environ:
        return True
    from .training.distributed import DistributedError, record_failure

    return record_failure(str(exc), lost=isinstance(exc, DistributedError))
