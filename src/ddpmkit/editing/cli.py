"""``ddpmkit inpaint``, ``ddpmkit img2img`` and ``ddpmkit interpolate``: edit images with a trained run and write one
grid of the inputs and the results. Every argument, the images and the mask are checked against the run before the
weights are read."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..cli_args import OneLineParser
from ..errors import DdpmkitError
from ..sampling import SAMPLERS, SPACINGS
from .inputs import MASK_REGIONS, as_model_images, read_image, read_mask

IMAGE_HELP = "a PNG of the run's size, or a data set entry NAME:SPLIT:INDEX (e.g. mnist:test:17)"


def _common_flags(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("run", type=Path, help="run folder (its newest checkpoint) or checkpoint folder")
    p.add_argument("--sampler", choices=SAMPLERS, help="default: the run's recommended sampler")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's for its sampler)")
    p.add_argument("--spacing", choices=SPACINGS, help="timestep spacing (default: the sampler's or the run's)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η: 0 deterministic, 1 DDPM-like")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (the same seed gives the same images)")
    p.add_argument("--label", type=int, help="the class to steer towards (class-conditional runs; default: none, "
                                             "the unconditional model)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale with --label (default: the run's)")
    p.add_argument("--out", type=Path, default=Path(out), help=f"the grid to write (default {out})")
    p.add_argument("--batch-size", type=int, default=256, help="images per model call")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (the best there is)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="autocast precision of the UNet (auto: bf16 where the hardware has it natively)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="which weights (default: ema)")
    p.add_argument("--lora", type=Path, metavar="DIR", help="apply a LoRA adapter made for this run")
    p.add_argument("--lora-scale", type=float, default=1.0, help="adapter strength s: 0 the base, 1 as trained")


def _request(args: argparse.Namespace, num: int, info, sampler: str | None = None):
    """The edit's request, resolved against the run (no weights read)."""
    from ..pipeline import edit_request
    from ..request import SampleRequest

    request = SampleRequest(num=num, sampler=sampler or args.sampler, steps=args.steps, spacing=args.spacing,
                            eta=args.eta, labels=None if args.label is None else (args.label,),
                            guidance=args.guidance, seed=args.seed, batch_size=args.batch_size)
    return edit_request(request, info)


def _prepare(args: argparse.Namespace, specs: list[str]):
    """(run info, checkpoint folder, uint8 images) after every check that needs no weights."""
    from ..atomic import check_writable
    from ..run import RunFolder
    from ..viz import image_format

    check_writable(args.out, "file", "--out")
    image_format(args.out, "--out")
    run, checkpoint = RunFolder.locate(args.run)
    info = run.info(checkpoint)
    if args.label is not None and info.num_classes is None:
        raise DdpmkitError(f"{checkpoint} is an unconditional run: --label needs a class-conditional model; "
                           "drop --label")
    unet = info.unet
    images = []
    for spec in specs:
        image, _ = read_image(spec, unet.in_channels, unet.image_size)
        as_model_images(image, unet.in_channels, unet.image_size, f"--image {spec}")  # size and channels
        images.append(image)
    return info, checkpoint, images


def _pipeline(args: argparse.Namespace, checkpoint: Path):
    from ..pipeline import Pipeline

    return Pipeline.from_run(checkpoint, device=args.device, precision=args.precision, weights=args.weights,
                             lora=args.lora, lora_scale=args.lora_scale)


def _save(tiles: list[np.ndarray], nrow: int, path: Path) -> None:
    from ..viz import save_grid

    save_grid(np.stack(tiles), path, nrow=nrow)


def _check_num(num: int, least: int = 1) -> None:
    if num < least:
        raise DdpmkitError(f"--num must be at least {least}, got {num}")


def inpaint_main(argv: list[str]) -> int:
    p = OneLineParser(prog="ddpmkit inpaint", description="Repaint the masked part of an image so that it agrees "
                      "with the rest (RePaint). Writes a grid: the input, the mask, then --num results.")
    p.add_argument("--image", required=True, help=IMAGE_HELP)
    p.add_argument("--mask", required=True,
                   help=f"a PNG of the image's size, white = repaint, black = keep; or {', '.join(MASK_REGIONS)}")
    p.add_argument("--num", type=int, default=8, help="results to draw (default 8)")
    p.add_argument("--resample", type=int, default=1,
                   help="RePaint's resampling: walk each stretch of --jump-length steps this many times "
                        "(1: plain replacement; ddpm and ddim only above 1)")
    p.add_argument("--jump-length", type=int, default=10, help="steps per resampled stretch (default 10)")
    _common_flags(p, "inpaint.png")
    args = p.parse_args(argv)
    _check_num(args.num)
    from .methods import check_mask, check_resampling

    info, checkpoint, (image,) = _prepare(args, [args.image])
    mask = read_mask(args.mask, info.unet.image_size)
    import torch

    check_mask(torch.from_numpy(mask), as_model_images(image, info.unet.in_channels, info.unet.image_size))
    request = _request(args, args.num, info)
    check_resampling(request.sampler, args.jump_length, args.resample)
    results = _pipeline(args, checkpoint).inpaint(image, mask, request, args.jump_length, args.resample,
                                                  progress=True)
    shown_mask = np.repeat(mask[..., None] * 255, image.shape[-1], axis=-1).astype(np.uint8)
    _save([image, shown_mask, *results], min(2 + args.num, 10), args.out)
    print(f"wrote {args.out}: input, mask, {args.num} results ({_describe(request)}, resample {args.resample})")
    return 0


def _describe(request) -> str:
    """What the edit ran, with the class (or "unconditional")."""
    cls = "unconditional" if request.guidance == 0.0 or request.labels is None else f"class {request.labels[0]}"
    return f"{request.sampler}, {request.steps} steps, {request.spacing} spacing, {cls}" + (
        f", guidance {request.guidance:g}" if request.guidance not in (None, 0.0, 1.0) else "")


def img2img_main(argv: list[str]) -> int:
    p = OneLineParser(prog="ddpmkit img2img", description="Turn a rough image into a clean sample (SDEdit): noise "
                      "it part of the way and denoise. Writes a grid: the input, then --num results.")
    p.add_argument("--image", required=True, help=IMAGE_HELP)
    p.add_argument("--strength", type=float, required=True,
                   help="how far to noise: 0 returns the input, 1 ignores it (sampling from noise); 0.5-0.7 cleans "
                        "up a sketch")
    p.add_argument("--num", type=int, default=8, help="results to draw (default 8)")
    _common_flags(p, "img2img.png")
    args = p.parse_args(argv)
    _check_num(args.num)
    from .methods import check_strength

    strength = check_strength(args.strength)
    info, checkpoint, (image,) = _prepare(args, [args.image])
    request = _request(args, args.num, info)
    results = _pipeline(args, checkpoint).img2img(image, strength, request, progress=True)
    _save([image, *results], min(1 + args.num, 9), args.out)
    print(f"wrote {args.out}: input, {args.num} results (strength {strength:g}, {_describe(request)})")
    return 0


def interpolate_main(argv: list[str]) -> int:
    p = OneLineParser(prog="ddpmkit interpolate", description="Walk from one image to another: both are inverted "
                      "to noise with DDIM, the noises joined on a great circle (slerp), every point drawn back.")
    p.add_argument("--image", required=True, action="append", help=IMAGE_HELP + "; give it twice")
    p.add_argument("--num", type=int, default=8, help="images from the first to the second, both included")
    _common_flags(p, "interpolate.png")
    args = p.parse_args(argv)
    if len(args.image) != 2:
        raise DdpmkitError(f"interpolate needs two images: give --image twice (got {len(args.image)})")
    _check_num(args.num, 2)
    if args.sampler not in (None, "ddim"):
        raise DdpmkitError("interpolation inverts and draws with DDIM (η = 0): drop --sampler")
    info, checkpoint, (a, b) = _prepare(args, args.image)
    request = _request(args, 1, info, sampler="ddim")
    frames = _pipeline(args, checkpoint).interpolate(a, b, args.num, request)
    _save([a, *frames, b], args.num + 2, args.out)
    print(f"wrote {args.out}: the first image, {args.num} steps of the way (DDIM both ways), the second")
    return 0
