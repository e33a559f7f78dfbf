"""``ddpmkit export RUN --format diffusers --out DIR`` and ``ddpmkit import-diffusers DIR --out RUN``: every check
before anything is written."""

from __future__ import annotations

from pathlib import Path

from ..cli_args import OneLineParser


def export_main(argv: list[str]) -> int:
    p = OneLineParser(prog="ddpmkit export",
                      description="Write a run as a folder that diffusers loads with no code of ours: "
                                  "DDPMPipeline.from_pretrained(DIR) (UNet2DModel + DDPMScheduler).")
    p.add_argument("run", type=Path, help="run folder (its newest checkpoint) or checkpoint folder")
    p.add_argument("--format", choices=("diffusers",), default="diffusers", help="the format (diffusers)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the pipeline folder to write")
    p.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights (default: ema)")
    args = p.parse_args(argv)
    from ..atomic import check_writable
    from .diffusers import export_run

    check_writable(args.out, "dir", "--out")
    out = export_run(args.run, args.out, weights=args.weights)
    print(f"wrote {out} (model_index.json, unet/, scheduler/); in Python: "
          f"diffusers.DDPMPipeline.from_pretrained({str(out)!r})")
    return 0


def import_main(argv: list[str]) -> int:
    p = OneLineParser(prog="ddpmkit import-diffusers",
                      description="Turn a diffusers UNet2DModel folder (config.json + "
                                  "diffusion_pytorch_model.safetensors), or a DDPM pipeline folder holding unet/ and "
                                  "scheduler/, into a run folder that sample, eval, lora and demo accept.")
    p.add_argument("folder", type=Path, metavar="DIR", help="the diffusers folder")
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="the run folder to write")
    p.add_argument("--data", help="the data set it was trained on (eval's reference), e.g. cifar10:PATH")
    args = p.parse_args(argv)
    from ..atomic import check_writable
    from .diffusers import import_unet2d

    check_writable(args.out, "dir", "--out")
    checkpoint = import_unet2d(args.folder, args.out, data=args.data)
    print(f"imported {args.folder} as {checkpoint}; sample with: ddpmkit sample {args.out}")
    return 0
