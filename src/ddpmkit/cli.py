"""The command line: parses arguments and calls the library. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_args import EXIT_USER_ERROR, OneLineParser, add_training_flags, flag_assignments, out_folder, report_error
from .errors import DdpmkitError, DdpmkitWarning
from .malloc import keep_freed_memory
from .sampling import SAMPLER_REGISTRY, SAMPLERS, SPACINGS

DEFAULT_STEPS_HELP = ", ".join(f"{name} {d.steps or 'all T'}" for name, d in SAMPLER_REGISTRY.items())

if TYPE_CHECKING:
    import torch

def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a diffusion model (default: the mnist preset on this machine)",
                       description="Train a diffusion model. With no arguments: the mnist preset into runs/mnist.")
    p.add_argument("--preset", default="mnist", help="preset name or YAML file (see `ddpmkit presets`)")
    p.add_argument("--data", help="mnist, fashion-mnist, pokemon, emoji, digits, folder:PATH or cifar10:PATH")
    p.add_argument("--out", type=out_folder, help="run folder (default runs/<preset>)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="PATH",
                   help="continue the newest checkpoint of the run folder, or the run/checkpoint at PATH")
    add_training_flags(p)


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate images from a run or checkpoint")
    p.add_argument("run", type=Path, help="run folder (its newest checkpoint) or checkpoint folder")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="default: the run's (train.sample_sampler, with its sample_steps and sample_spacing)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps (default: the run's for its sampler, else {DEFAULT_STEPS_HELP})")
    p.add_argument("--spacing", choices=SPACINGS,
                   help="timesteps: trailing (default; ddpm: linspace; or as the run's preset says), logsnr "
                        "(λ-uniform), karras, linspace, leading")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η: 0 deterministic, 1 DDPM-like")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clip x̂₀ to [-1, 1] at every step (default: as the run's preset says)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", help="comma-separated class indices for a class-conditional model "
                                    "(default there: class-balanced, 0..K-1 in turn)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale w >= 0 (conditional models): 0 unconditional, 1 conditional, "
                        "> 1 sharper classes (default: the run's train.sample_guidance)")
    p.add_argument("--per-class", type=int, metavar="N",
                   help="a grid with one labelled row of N images per class (conditional models; replaces --num)")
    p.add_argument("--out", type=Path, default=Path("grid.png"))
    p.add_argument("--individual", type=Path, metavar="DIR", help="also write one PNG per image into DIR")
    p.add_argument("--gif", action="store_true", help="also write the denoising progression as <out>.gif")
    p.add_argument("--npz", type=Path, metavar="FILE",
                   help="also write the images as one uint8 array 'images' (N, H, W, C) in a compressed .npz")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the UNet from a CUDA graph (default: on with CUDA)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"))
    p.add_argument("--lora", type=Path, metavar="DIR", help="apply a LoRA adapter made for this run (ddpmkit lora)")
    p.add_argument("--lora-scale", type=float, default=1.0, help="adapter strength s: 0 the base, 1 as trained")


# Commands with parsers of their own (data, eval, demo, lora): ``ddpmkit NAME ...`` hands them the rest of argv.
DELEGATED = {"data": "list | fetch NAME | show NAME: the named data sets",
             "eval": "FID/KID and more for a run over samplers and step counts (ddpmkit eval --help)",
             "demo": "a Gradio app for a trained run (ddpmkit demo --help; pip install 'ddpmkit[demo]')",
             "lora": "fine-tune a run with LoRA adapters, or merge one (ddpmkit lora --help)",
             "distill": "distil a run into a few-step DDIM student (progressive distillation; ddpmkit distill --help)",
             "export": "write a run as a diffusers pipeline folder (ddpmkit export --help)",
             "import-diffusers": "turn a diffusers UNet2DModel folder into a run (ddpmkit import-diffusers --help)",
             "inpaint": "repaint the masked part of an image (RePaint; ddpmkit inpaint --help)",
             "img2img": "turn a rough image into a clean sample (SDEdit; ddpmkit img2img --help)",
             "interpolate": "walk between two images through their DDIM noises (ddpmkit interpolate --help)"}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="ddpmkit", description="Denoising diffusion from scratch.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sample(sub)
    for name, text in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser("presets", help="list the training presets")
    return parser


def _delegate(command: str, rest: list[str]) -> int:
    if command == "data":
        from .data.cli import main as data_main

        return data_main(rest)
    if command == "demo":
        from .demo.cli import demo_main

        return demo_main(rest)
    if command == "lora":
        from .lora.cli import lora_main

        return lora_main(rest)
    if command == "distill":
        from .distill.cli import DESCRIPTION, add_arguments, distill_command

        parser = OneLineParser(prog="ddpmkit distill", description=DESCRIPTION)
        add_arguments(parser)
        return distill_command(parser.parse_args(rest))
    if command in ("inpaint", "img2img", "interpolate"):
        from .editing.cli import img2img_main, inpaint_main, interpolate_main

        return {"inpaint": inpaint_main, "img2img": img2img_main, "interpolate": interpolate_main}[command](rest)
    if command in ("export", "import-diffusers"):
        from .export.cli import export_main, import_main

        return (export_main if command == "export" else import_main)(rest)
    from .eval.cli import eval_main

    return eval_main(rest)


def resolve_train_config(args: argparse.Namespace):
    """(config, run folder, checkpoint to resume or None) from the train flags."""
    from .presets import load_preset
    from .run import RunFolder

    resume_path = None
    if args.resume is not None:
        if args.resume == "latest":
            run = RunFolder(args.out or Path("runs") / Path(args.preset).stem)
            resume_path = run.latest_checkpoint()
        else:
            run, resume_path = RunFolder.locate(Path(args.resume))
            run = RunFolder(args.out) if args.out else run
        config = run.load_config(resume_path)
    else:
        config = load_preset(args.preset)
        run = RunFolder(args.out or Path("runs") / Path(args.preset).stem)
        if run.has_checkpoints():
            raise DdpmkitError(f"{run.path} already holds a trained run; pass --resume to continue it "
                               "or --out NEW_FOLDER to start another")
    config.override(flag_assignments(args))
    return config, run.path, resume_path


def describe_device(device: torch.device) -> str:
    """cpu: the CPU in words (a speed means little without it); cuda: the GPU's name."""
    import torch

    from .device import cpu_description

    if device.type == "cpu":
        return f"cpu, {cpu_description()}"
    if device.type == "cuda":
        return f"{device}, {torch.cuda.get_device_name(device)}"
    return str(device)


def cmd_train(args: argparse.Namespace) -> int:
    from .atomic import check_writable
    from .cli_args import start_training
    from .run import RunFolder
    from .training.distributed import parallel_errors, teardown
    from .training.plots import format_summary

    config, run_dir, resume_path = resolve_train_config(args)
    check_writable(run_dir, "dir", "--out")
    trainer = start_training(args, config, run_dir, resume_path)
    if isinstance(trainer, int):  # --nproc's exit status, or a rank other than 0 that has finished
        return trainer
    where = f"resuming {resume_path} at step {trainer.step}" if resume_path else "new run"
    print(f"ddpmkit train: {config.data.name} on {describe_device(trainer.device)} ({trainer.precision})"
          f"{trainer.parallel.describe_batch(config.train.batch_size)}, "
          f"{trainer.total_steps} steps, UNet {sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f}M "
          f"params -> {run_dir} ({where})", flush=True)
    start = time.perf_counter()
    with parallel_errors():
        result = trainer.fit()
        teardown()
    print(f"trained {result.step} steps in {time.perf_counter() - start:.0f} s; {format_summary(result.summary)}")
    if trainer.stopped_by_time:
        print(f"stopped after --max-minutes {config.train.max_minutes:g} at step {result.step} of "
              f"{trainer.total_steps}; continue with: ddpmkit train --resume {run_dir}")
    run = RunFolder(run_dir)
    print(f"samples: {run.samples_dir}; loss curve: {run.loss_curve}; "
          f"sample more with: ddpmkit sample {run_dir}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from PIL import Image

    from .atomic import check_writable
    from .pipeline import Pipeline
    from .request import SampleRequest
    from .run import RunFolder
    from .viz import image_format, make_grid, save_gif, save_grid, to_uint8

    # every check before any work: arguments, output paths, the request against the run, then the weights
    labels = None
    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",")]
        except ValueError:
            raise DdpmkitError(f"--labels expects comma-separated integers, got '{args.labels}'") from None
    if args.per_class is not None:
        if args.per_class < 1:
            raise DdpmkitError(f"--per-class must be at least 1 (got {args.per_class})")
        if labels is not None:
            raise DdpmkitError("--per-class draws every class: drop --labels (or drop --per-class)")
    request = SampleRequest(num=args.num, sampler=args.sampler, steps=args.steps, spacing=args.spacing, eta=args.eta,
                            clip_denoised=args.clip, labels=labels, guidance=args.guidance, seed=args.seed,
                            batch_size=args.batch_size)
    if args.gif and args.num > args.batch_size:
        raise DdpmkitError("--gif records one batch: use --num no larger than --batch-size")
    check_writable(args.out, "file", "--out")
    image_format(args.out, "--out")  # the grid is written in the format its extension names
    if args.gif:
        check_writable(args.out.with_suffix(".gif"), "file", "--out")
    if args.individual:
        check_writable(args.individual, "dir", "--individual")
    if args.npz:
        check_writable(args.npz, "file", "--npz")
    run, checkpoint = RunFolder.locate(args.run)
    info = run.info(checkpoint)
    row_labels, nrow, k = None, None, info.num_classes
    if args.per_class is not None:
        if k is None:
            raise DdpmkitError(f"{checkpoint} is an unconditional run: --per-class needs a class-conditional "
                               "model; use --num")
        request = dataclasses.replace(request, num=args.per_class * k,
                                      labels=tuple(c for c in range(k) for _ in range(args.per_class)))
        nrow = args.per_class
        names = info.class_names if len(info.class_names) == k else range(k)
        row_labels = [str(name) for name in names]
        if args.gif and request.num > args.batch_size:
            raise DdpmkitError(f"--gif records one batch: --per-class {args.per_class} draws {request.num} images, "
                               f"more than --batch-size {args.batch_size}")
    elif labels is None and k is not None:
        # the request draws one of each class in turn: column k of the grid is class k
        nrow = k if args.num >= k else None
        print(f"conditional run: class-balanced labels 0..{k - 1}, column by column "
              "(choose with --labels or --per-class)")
    request = request.resolve(info)
    pipe = Pipeline.from_run(checkpoint, device=args.device, precision=args.precision, weights=args.weights,
                             lora=args.lora, lora_scale=args.lora_scale)
    frames = []
    callback = None
    if args.gif:
        callback = lambda step: frames.append(make_grid(to_uint8(step.x.clamp(-1, 1).cpu())))
    start = time.perf_counter()
    images = pipe.generate(request, progress=True, callback=callback, cuda_graph=args.cuda_graph)
    seconds = time.perf_counter() - start
    save_grid(images, args.out, nrow=nrow, row_labels=row_labels)
    written = [str(args.out)]
    if args.individual:
        args.individual.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(args.individual / f"{i:05d}.png")
        written.append(f"{len(images)} PNGs in {args.individual}")
    if args.npz:
        import numpy as np

        from .atomic import atomic_file

        with atomic_file(args.npz) as handle:
            np.savez_compressed(handle, images=images)
        written.append(str(args.npz))
    if args.gif:
        frames.append(make_grid(images))
        gif = args.out.with_suffix(".gif")
        save_gif(frames, gif)
        written.append(str(gif))
    print(f"{request.num} images ({request.describe()}) in {seconds:.1f} s ({request.num / seconds:.1f} images/s) "
          f"from {checkpoint}; wrote {', '.join(written)}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import list_presets

    print("\n".join(list_presets()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    args = None if command in DELEGATED else build_parser().parse_args(argv)
    if args is not None:
        args.argv = argv  # what --nproc runs in each process
    if command in ("train", "sample", "eval", "demo", "distill"):
        keep_freed_memory()  # glibc: reuse freed activations instead of page-faulting them in every step
        # CUDA: grow the caching allocator's segments in place instead of carving fixed blocks, so sampling after
        # training (other shapes) reuses the memory rather than fragmenting it; a user's own setting wins
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    with warnings.catch_warnings():  # ddpmkit's own warnings as one line, like its errors; others as they were
        shown = warnings.showwarning

        def one_line(message, category, filename, lineno, file=None, line=None) -> None:
            if not issubclass(category, DdpmkitWarning):
                return shown(message, category, filename, lineno, file, line)
            print(f"ddpmkit: warning: {' '.join(str(message).split())}", file=file or sys.stderr)

        warnings.showwarning = one_line
        return _run(command, args, argv)


def _run(command: str | None, args: argparse.Namespace | None, argv: list[str]) -> int:
    try:
        if command in DELEGATED:
            return _delegate(command, argv[1:])
        if args.command == "train":
            return cmd_train(args)
        if args.command == "sample":
            return cmd_sample(args)
        return cmd_presets(args)
    except DdpmkitError as exc:
        if report_error(exc):  # in a distributed run: rank 0, or the rank that failed on its own
            print(f"ddpmkit: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if not os.environ.get("DDPMKIT_LAUNCHED"):  # under --nproc the launcher says it, once
            print("ddpmkit: interrupted; the last checkpoint is intact (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
