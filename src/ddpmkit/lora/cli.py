"""``ddpmkit lora RUN --data NAME --out DIR`` trains an adapter; ``ddpmkit lora merge RUN DIR --out NEW_RUN`` merges
one into a standalone run. Every check runs before anything is written."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import DdpmkitError


def _train_parser() -> argparse.ArgumentParser:
    from ..cli_args import OneLineParser, add_training_flags, out_folder

    p = OneLineParser(prog="ddpmkit lora",
                      description="Fine-tune a trained run with low-rank adapters W + (α/r)·B·A on a frozen base, "
                                  "with the ordinary trainer (EMA, checkpoints, --resume, metrics, TensorBoard). DIR "
                                  "becomes a run folder holding adapter.safetensors and adapter.json. "
                                  "`ddpmkit lora merge RUN DIR --out NEW_RUN` merges an adapter into a new run.")
    p.add_argument("run", type=Path, help="the base: a run folder (its newest checkpoint) or a checkpoint folder")
    p.add_argument("--out", type=out_folder, required=True, metavar="DIR", help="the LoRA run folder (and adapter)")
    p.add_argument("--data", help="data to adapt to (default: the base's), e.g. fashion-mnist or folder:PATH")
    p.add_argument("--rank", type=int, help="r (default 8)")
    p.add_argument("--alpha", type=float, help="α (default: the rank, so α/r = 1)")
    p.add_argument("--targets", help="comma-separated from attn (default), conv, mlp")
    p.add_argument("--resume", action="store_true", help="continue the newest checkpoint in --out")
    add_training_flags(p, steps_help="optimizer steps (default: the base's)")
    return p


def _merge_parser() -> argparse.ArgumentParser:
    from ..cli_args import OneLineParser, out_folder

    p = OneLineParser(prog="ddpmkit lora merge",
                      description="Merge an adapter into its base: a standalone run folder for sample, eval, demo.")
    p.add_argument("run", type=Path, help="the base the adapter was trained on")
    p.add_argument("adapter", type=Path, metavar="DIR", help="the adapter folder (ddpmkit lora --out DIR)")
    p.add_argument("--out", type=out_folder, required=True, metavar="NEW_RUN", help="the merged run folder")
    p.add_argument("--scale", type=float, default=1.0, help="strength s merged in (default 1)")
    return p


def resolve_lora_config(args: argparse.Namespace):
    """(config, run folder, checkpoint to resume or None): the base's config, the LoRA section, the flags."""
    from ..cli_args import flag_assignments
    from ..config import LoRAConfig
    from ..run import RunFolder
    from .adapter import check_rank, parse_targets

    if args.rank is not None:
        check_rank(args.rank)
    targets = parse_targets(args.targets) if args.targets is not None else None
    base_run, base_checkpoint = RunFolder.locate(args.run)
    run = RunFolder(args.out)
    if args.resume:
        resume_path = run.latest_checkpoint()
        config = run.load_config(resume_path)
    else:
        if run.has_checkpoints():
            raise DdpmkitError(f"{run.path} already holds a trained run; pass --resume to continue it "
                               "or another --out to start a new one")
        resume_path, config = None, base_run.load_config(base_checkpoint)
        config.lora = LoRAConfig(rank=args.rank or LoRAConfig.rank)
        config.lora.alpha = float(config.lora.rank)  # α = r (α/r = 1) unless --alpha
    config.lora.base = os.path.abspath(base_checkpoint)
    if args.rank is not None:
        config.lora.rank = args.rank
    if args.alpha is not None:
        config.lora.alpha = float(args.alpha)
    if targets is not None:
        config.lora.targets = targets
    config.override(flag_assignments(args))
    return config, run.path, resume_path


def cmd_lora(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from ..checkpoint import tensor_file
    from ..cli_args import start_training
    from ..training.distributed import parallel_errors, teardown
    from ..training.plots import format_summary
    from .adapter import ADAPTER_WEIGHTS, short

    config, run_dir, resume_path = resolve_lora_config(args)
    check_writable(run_dir, "dir", "--out")
    trainer = start_training(args, config, run_dir, resume_path)
    if isinstance(trainer, int):  # --nproc's exit status, or a rank other than 0 that has finished
        return trainer
    lora, base = config.lora, trainer.lora
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    where = f"resuming {resume_path} at step {trainer.step}" if resume_path else "new run"
    print(f"ddpmkit lora: {base.checkpoint} ({short(base.fingerprint)}) -> {config.data.name} on {trainer.device} "
          f"({trainer.precision}), rank {lora.rank}, alpha {lora.alpha:g}, targets {','.join(lora.targets)}: "
          f"{trainable:,} trainable of {total:,} params, {trainer.total_steps} steps -> {run_dir} ({where})",
          flush=True)
    start = time.perf_counter()
    with parallel_errors():
        result = trainer.fit()
        teardown()
    print(f"trained {result.step} steps in {time.perf_counter() - start:.0f} s; {format_summary(result.summary)}")
    adapter = run_dir / ADAPTER_WEIGHTS
    base_size = tensor_file(base.checkpoint, "ema").stat().st_size
    print(f"adapter: {adapter} ({adapter.stat().st_size / 1024:.0f} KiB, {adapter.stat().st_size / base_size:.1%} "
          f"of the base's weights); sample with: ddpmkit sample {args.run} --lora {run_dir}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ..atomic import check_writable
    from .merged_run import merge_run

    check_writable(args.out, "dir", "--out")
    checkpoint = merge_run(args.run, args.adapter, args.out, scale=args.scale)
    print(f"merged {args.adapter} into {args.run} at scale {args.scale:g}: {checkpoint}; "
          f"sample with: ddpmkit sample {args.out}")
    return 0


def lora_main(argv: list[str]) -> int:
    if argv[:1] == ["merge"]:
        return cmd_merge(_merge_parser().parse_args(argv[1:]))
    from ..malloc import keep_freed_memory

    args = _train_parser().parse_args(argv)
    args.argv = ["lora", *argv]  # what --nproc runs in each process
    keep_freed_memory()  # as ddpmkit train does: reuse freed activations instead of page-faulting them in
    return cmd_lora(args)
