"""How well does a model denoise the background at low noise? One lead for the default job's faint haze.

MNIST's background is exactly black (x_0 = −1 on 82% of the pixels), so a sample's faint background haze is the
error of the model's last x̂_0 there. This script noises real MNIST test images to x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε at
a few timesteps, asks each run's EMA model for x̂_0 in one step, and reports the RMS error over background pixels
(x_0 = −1) and over the digit (the rest), beside σ_t = √(1−ᾱ_t), the RMS error of returning x_t unchanged.
An error below 1/255 (0.0039 in model units) rounds away in the uint8 image.

    python experiments/low_noise_denoising.py runs/base runs/nominsnr      # ~30 s on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddpmkit.data import load_dataset
from ddpmkit.pipeline import Pipeline

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON
TIMESTEPS = (0, 2, 5, 10, 19, 49, 99, 199)


@torch.no_grad()
def denoising_errors(pipe: Pipeline, x0: torch.Tensor, timesteps=TIMESTEPS, seed: int = 0) -> list[dict]:
    """RMS error of one-step x̂_0 over background and digit pixels, per timestep (same noise for every run)."""
    diffusion, background = pipe.diffusion, x0 == -1
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in (t for t in timesteps if t < diffusion.num_steps):  # a shorter process (T = 100) has fewer of them
        tt = torch.full((len(x0),), t)
        x_t = diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=generator))
        x0_hat, _ = diffusion.predict_x0_eps(pipe.model(x_t, tt), x_t, tt)
        err = x0_hat.clamp(-1, 1) - x0  # the image is clamped before it is written, so score what is seen
        rows.append({"t": t, "sigma": float(diffusion.schedule.sqrt_one_minus_alphas_cumprod[t]),
                     "background_rms": float(err[background].pow(2).mean().sqrt()),
                     "digit_rms": float(err[~background].pow(2).mean().sqrt())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (their newest checkpoint's EMA weights)")
    p.add_argument("--num", type=int, default=256, help="MNIST test images")
    p.add_argument("--out", type=Path, default=RESULTS / "low_noise_denoising.json")
    args = p.parse_args()
    real = load_dataset("mnist", "test", 28, progress=False).images[: args.num]
    x0 = torch.from_numpy(real).float().permute(0, 3, 1, 2) / 127.5 - 1
    report = {"num": args.num, "split": "mnist test", "runs": {}}
    for run in args.runs:
        pipe = Pipeline.from_run(run, device="cpu", precision="fp32")
        rows = denoising_errors(pipe, x0)
        report["runs"][str(run)] = {"diffusion": repr(pipe.diffusion), "rows": rows}
    names = list(report["runs"])
    by_t = {n: {r["t"]: r for r in report["runs"][n]["rows"]} for n in names}
    print("| t | σ_t | " + " | ".join(f"{n}: background / digit" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for t in sorted(set().union(*by_t.values())):
        rows_at_t = [by_t[n].get(t) for n in names]
        cells = [f"{r['background_rms']:.4f} / {r['digit_rms']:.3f}" if r else "–" for r in rows_at_t]
        sigma = next(r["sigma"] for r in rows_at_t if r)
        print(f"| {t} | {sigma:.4f} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
