"""Does clipping x̂_0 at every sampling step cost quality? Samplers x clipping on one trained run.

Each setting draws ``--num`` images from the run's EMA weights with the same initial noise and reports the share of
pixels exactly black and faintly lit (1–2, 3–10, 11–40 of 255: the background haze of
docs/experiments/background_haze.json), the MNIST-classifier metrics (classifier FID, share classified with
p > 0.9) and, with ``--inception``, Inception FID against the cached MNIST test[:2000] statistics. A setting is
SAMPLER:SPACING:STEPS:clip|noclip; STEPS+0 adds a last model evaluation at t = 0 after the spaced steps.

    python experiments/clip_denoised.py runs/mnist --num 500 --inception \\
        --configs ddim:trailing:50:clip ddim:trailing:50:noclip dpm++2m:trailing:20:noclip
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the shared harness
from harness import Judge  # noqa: E402

from ddpmkit.pipeline import Pipeline  # noqa: E402
from ddpmkit.sampling import conditioned_model_fn, eval_mode, make_step, sample_loop, timestep_spacing  # noqa: E402
from ddpmkit.viz import to_uint8  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON


def pixel_shares(images: np.ndarray) -> dict[str, float]:
    """Shares of all pixels at 0 and in the faint bands 1–2, 3–10, 11–40 (uint8)."""
    u = images.astype(np.int32)
    return {"zero": float((u == 0).mean()), "1-2": float(((u >= 1) & (u <= 2)).mean()),
            "3-10": float(((u >= 3) & (u <= 10)).mean()), "11-40": float(((u >= 11) & (u <= 40)).mean())}


def parse_setting(spec: str) -> tuple[str, str, int, bool, bool]:
    """SAMPLER:SPACING:STEPS[+0]:clip|noclip -> (sampler, spacing, steps, extra t=0 step, clip)."""
    try:
        sampler, spacing, steps, clip = spec.split(":")
        extra = steps.endswith("+0")
        n = int(steps[:-2] if extra else steps)
    except ValueError:
        raise SystemExit(f"bad setting '{spec}'; write SAMPLER:SPACING:STEPS:clip|noclip") from None
    if clip not in ("clip", "noclip"):
        raise SystemExit(f"bad setting '{spec}': the last field is clip or noclip")
    return sampler, spacing, n, extra, clip == "clip"


def draw(pipe: Pipeline, num: int, spec: str, seed: int = 0, batch: int = 250) -> np.ndarray:
    """``num`` uint8 images of one setting; the initial noise depends only on ``seed``."""
    sampler, spacing, steps, extra, clip = parse_setting(spec)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num, *pipe.image_shape), generator=generator)
    diffusion = pipe.diffusion
    timesteps = timestep_spacing(diffusion.num_steps, steps, spacing, diffusion.schedule.alphas_cumprod)
    if extra:
        timesteps = torch.cat([timesteps, torch.tensor([0])])
    model_fn = conditioned_model_fn(pipe.model, {}, None, None, pipe.device, None)
    chunks = []
    with eval_mode(pipe.model):
        for start in range(0, num, batch):
            x = sample_loop(model_fn, diffusion, noise[start:start + batch].clone().to(pipe.device), timesteps,
                            make_step(sampler), generator=generator, clip_denoised=clip)
            chunks.append(to_uint8(x.clamp(-1, 1)))
    return np.concatenate(chunks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint folder (an MNIST run)")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--configs", nargs="+", default=["ddim:trailing:50:clip", "ddim:trailing:50:noclip"])
    p.add_argument("--inception", action="store_true", help="also Inception FID (minutes per setting on a CPU)")
    p.add_argument("--ref-num", type=int, default=2000)
    p.add_argument("--out", type=Path, default=RESULTS / "clip_denoised.json")
    args = p.parse_args()
    for spec in args.configs:
        parse_setting(spec)
    pipe = Pipeline.from_run(args.run, device="cpu", precision="fp32")
    judge = Judge(ref_num=args.ref_num, inception=args.inception)
    rows = []
    print(f"{'setting':<28} {'zero':>6} {'1-2':>6} {'3-10':>6} {'cFID':>7} {'p>0.9':>6} {'FID':>6} {'s':>6}")
    for spec in args.configs:
        start = time.perf_counter()
        images = draw(pipe, args.num, spec)
        seconds = time.perf_counter() - start
        row = {"setting": spec, "num": args.num, "generation_s": seconds, **pixel_shares(images), **judge(images)}
        rows.append(row)
        fid = f"{row['fid']:6.1f}" if "fid" in row else "     -"
        print(f"{spec:<28} {row['zero']:6.3f} {row['1-2']:6.3f} {row['3-10']:6.3f} {row['cfid']:7.1f} "
              f"{row['confident']:6.3f} {fid} {seconds:6.0f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
