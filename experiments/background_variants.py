"""What is the background worth to a run's FID? The same samples scored as drawn and with their background changed.

The default job loses Inception FID to grey backgrounds (a per-image offset that follows the initial noise's
mean, experiments/background_offset.py). This script draws ``--num`` DDIM samples of one run from one seed
(class-balanced labels for a conditional run, as ``ddpmkit eval`` gives them) and scores, side by side:

- ``as drawn``: what ``ddpmkit eval RUN --sampler ddim --steps 50`` scores;
- ``x_T mean removed``: the same initial noise with each image's spatial mean subtracted, ε ← ε − mean(ε), so the
  one direction of x_T a per-channel normalisation cannot see starts at 0 (a sampling-only change);
- ``ddim + a last step at t``: one more DDIM step, so the final x̂_0 comes from t (``--last-t``), not 19;
- ``oracle: ≤ K grey set to 0``: the drawn images with every pixel at or below K of 255 set to black. Not a method
  (it knows MNIST's background is black): an upper bound on what removing the background haze could give.

Each row has the Inception FID against the data's test[:ref-num] (its reference statistics cached), the classifier
FID, the share classified with p > 0.9 and the share of images whose background median is at least 2 grey levels.

    python experiments/background_variants.py runs/cA --num 2000     # ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ddpmkit.eval.classifier import MnistClassifier
from ddpmkit.eval.inception import InceptionFeatures
from ddpmkit.eval.reference import reference_stats_with_fallback
from ddpmkit.eval.sweep import score_images
from ddpmkit.pipeline import Pipeline
from ddpmkit.sampling import eval_mode, make_step, sample_loop, timestep_spacing
from ddpmkit.viz import to_uint8

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON


@torch.no_grad()
def draw(pipe: Pipeline, noise: torch.Tensor, labels: np.ndarray | None, steps: int, batch: int,
         last_t: int | None = None) -> np.ndarray:
    """DDIM (trailing, η = 0) samples from the given x_T, as uint8 (N, H, W, C); with ``last_t`` one more step,
    to a final model evaluation at t = last_t (below trailing DDIM-50's last, 19)."""
    timesteps = timestep_spacing(pipe.diffusion.num_steps, steps, "trailing")
    if last_t is not None:
        timesteps = torch.cat([timesteps, torch.tensor([last_t])])
    out = []
    with eval_mode(pipe.model):
        for start in range(0, len(noise), batch):
            chunk = noise[start:start + batch].to(pipe.device)
            kwargs = {} if labels is None else {"labels": torch.as_tensor(labels[start:start + batch]).to(pipe.device)}
            model_fn = lambda x, t, kw=kwargs: pipe.model(x, t, **kw)  # noqa: E731
            out.append(sample_loop(model_fn, pipe.diffusion, chunk, timesteps, make_step("ddim")).cpu())
    return to_uint8(torch.cat(out).clamp(-1, 1))


def background_share(images: np.ndarray, level: int = 2) -> float:
    """Share of images whose background (pixels below 128) has a median of at least ``level`` grey levels."""
    flat = images.reshape(len(images), -1).astype(np.int32)
    medians = [np.median(row[row < 128]) if (row < 128).any() else 0 for row in flat]
    return float(np.mean(np.asarray(medians) >= level))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run folder (its newest checkpoint's EMA weights)")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-num", type=int, default=2000, help="test images in the reference statistics")
    p.add_argument("--oracle-grey", type=int, nargs="*", default=[10], help="K of the oracle rows")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--last-t", type=int, nargs="*", default=[], help="also: DDIM with one more step ending at t")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON (default docs/experiments/background_variants_RUN.json)")
    args = p.parse_args()

    pipe = Pipeline.from_run(args.run, precision="fp32")
    inception, classifier = InceptionFeatures(), MnistClassifier()
    size = pipe.model.config.image_size
    references = {name: reference_stats_with_fallback("mnist", extractor, num=args.ref_num, image_size=size)
                  for name, extractor in (("inception", inception), ("classifier", classifier))}
    labels = np.arange(args.num) % pipe.num_classes if pipe.num_classes else None
    noise = torch.randn((args.num, *pipe.image_shape), generator=torch.Generator().manual_seed(args.seed))
    centred = noise - noise.mean(dim=(2, 3), keepdim=True)

    variants: dict[str, np.ndarray] = {}
    timings = {}
    for name, x_T in (("as drawn", noise), ("x_T mean removed", centred)):
        start = time.perf_counter()
        variants[name] = draw(pipe, x_T, labels, args.steps, args.batch)
        timings[name] = round(time.perf_counter() - start, 1)
    for t in args.last_t:
        variants[f"ddim {args.steps} + a last step at t = {t}"] = draw(pipe, noise, labels, args.steps, args.batch, t)
    for k in args.oracle_grey:
        cleaned = variants["as drawn"].copy()
        cleaned[cleaned <= k] = 0
        variants[f"oracle: <= {k} grey set to 0"] = cleaned

    rows = []
    for name, images in variants.items():
        row = score_images(images, references, ("fid", "cfid", "classes"), inception=inception,
                           classifier=classifier, labels=labels)
        rows.append({"variant": name, "num": row["num"], "fid": round(row["fid"], 2), "cfid": round(row["cfid"], 1),
                     "p_gt_0.9": round(row["class_confident"], 4),
                     "class_accuracy": None if labels is None else round(row["class_accuracy"], 4),
                     "background_median_ge_2": round(background_share(images), 3)})
        print(rows[-1], flush=True)

    report = {
        "run": str(args.run), "run_config": (args.run / "config.yaml").read_text(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "sampler": f"ddim {args.steps} (trailing, eta 0), seed {args.seed}, w = 1" + (", class-balanced labels"
                                                                                       if labels is not None else ""),
        "reference": f"mnist test[:{args.ref_num}], {references['inception'].source}",
        "sampling_seconds": timings, "rows": rows,
    }
    out = args.out or RESULTS / f"background_variants_{args.run.name}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print("\n| variant | N | Inception FID | classifier FID | p > 0.9 | bg median >= 2 |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['num']} | {r['fid']} | {r['cfid']} | {r['p_gt_0.9']:.1%} | "
              f"{r['background_median_ge_2']:.0%} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
