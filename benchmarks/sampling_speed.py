"""Sampling speed: seconds for a batch of images per sampler at 10, 20 and 50 model evaluations (NFE), and the share
of that time spent outside the UNet (the sampler's own arithmetic, noise, timestep bookkeeping, host syncs).

For each named UNet size (random weights: speed does not depend on their values), each sampler and each NFE, the
whole ``ddpmkit.sample`` call is timed (median of ``--repeats``, device synchronised), and so is the UNet alone:
the same number of eager forward passes on the same batch, dtype and autocast. ``outside = 1 - unet / total``.
On CUDA every row is measured twice: eager, and with the UNet replayed from a CUDA graph (``cuda_graph=True``),
where "outside" against the eager UNet reads as zero once the graph beats the eager forward.

    python benchmarks/sampling_speed.py --device cuda                 # pokemon64 and mnist, bf16, 64 images
    .venv/bin/python benchmarks/sampling_speed.py --models tiny --num 8 --nfe 2,4 --no-write   # CPU smoke test

Writes benchmarks/results/sampling_speed_<device>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ddpmkit.device import autocast_dtype, configure_backend
from ddpmkit.diffusion import Diffusion
from ddpmkit.models import UNet, UNetConfig
from ddpmkit.sampling import SAMPLERS, sample
from ddpmkit.schedule import NoiseSchedule

RESULTS = Path(__file__).parent / "results"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(size: str, device: torch.device, precision: str, num: int, nfes: list[int], samplers: list[str],
            repeats: int) -> list[dict]:
    config = UNetConfig.named(size)
    model = UNet(config).to(device).eval()
    diffusion = Diffusion(NoiseSchedule.cosine(1000))
    dtype = autocast_dtype(precision, device)
    shape = (num, config.in_channels, config.image_size, config.image_size)
    x = torch.randn(shape, device=device)
    t = torch.full((num,), 500, device=device, dtype=torch.long)

    def unet_once():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model(x, t)

    per_forward = timed(lambda: [unet_once() for _ in range(10)], device, repeats) / 10
    rows = []
    for graph in (False, True) if device.type == "cuda" else (False,):
        for sampler in samplers:
            for nfe in nfes:
                def run(sampler=sampler, nfe=nfe, graph=graph):
                    sample(model, diffusion, shape, sampler=sampler, steps=nfe, device=device, autocast_dtype=dtype,
                           generator=torch.Generator().manual_seed(0), cuda_graph=graph)

                total = timed(run, device, repeats)
                unet = nfe * per_forward
                row = dict(model=size, sampler=sampler, nfe=nfe, num=num, cuda_graph=graph, seconds=total,
                           unet_seconds=unet, outside_share=max(0.0, 1 - unet / total), images_per_s=num / total)
                rows.append(row)
                print(f"{size:10s} {sampler:8s} NFE {nfe:3d}{' graph' if graph else ' eager'}: {total:7.3f} s for "
                      f"{num} images ({num / total:7.1f} img/s), eager UNet alone {unet:7.3f} s, outside it "
                      f"{100 * row['outside_share']:4.1f}%", flush=True)
    return rows


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"Sampling {rows[0]['num']} images on {env['device_name']} ({env['precision']}), torch {env['torch']}; "
             f"`{env['command']}`", "",
             "| model | sampler | NFE | CUDA graph | seconds | images/s | eager UNet alone, s | outside the UNet |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['nfe']} | {'yes' if r['cuda_graph'] else 'no'} | "
                     f"{r['seconds']:.3f} | {r['images_per_s']:.0f} | {r['unet_seconds']:.3f} | "
                     f"{100 * r['outside_share']:.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, fp32 on most CPUs), bf16, fp32")
    ap.add_argument("--models", default="pokemon64,mnist", help="named UNet sizes, comma-separated")
    ap.add_argument("--num", type=int, default=64, help="images per batch")
    ap.add_argument("--nfe", default="10,20,50", help="model evaluations (= steps for every sampler here)")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    configure_backend(device)
    precision = "bf16" if args.precision == "auto" and device.type == "cuda" else args.precision
    if precision == "auto":
        precision = "fp32" if autocast_dtype("auto", device) is None else "bf16"
    env = dict(torch=torch.__version__, device=str(device), precision=precision,
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               command="python benchmarks/sampling_speed.py " + " ".join(
                   f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                   for k, v in vars(args).items() if v not in (None, False)))
    rows = []
    out = RESULTS / f"sampling_speed_{device.type}.json"
    for size in args.models.split(","):
        rows += measure(size, device, precision, args.num, [int(n) for n in args.nfe.split(",")],
                        args.samplers.split(","), args.repeats)
        if not args.no_write:  # after each model: a run cut short keeps what it measured
            RESULTS.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print("\n" + markdown(rows, env))
    if not args.no_write:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
