"""Which textbook recipe, measured: noise schedule, prediction target, min-SNR weighting, learned variance.

Each recipe changes one thing of the preset (the default job's recipe is the first row) and trains for the same
number of steps, so at a fixed CPU budget (the UNet and its cost are the same; a learned variance adds one output
channel). Each is scored from its EMA weights: FID of N samples (Inception, or the classifier-feature FID with
``--no-inception``) against MNIST test[:2000], the share classified with p > 0.9, and the variational bound in
bits/dim on held-out images (``ddpmkit eval --nll``: N images, the terms used, a standard error). Built on the same
harness (``benchmarks/harness.py``) as ``benchmarks/time_to_quality.py`` and ``experiments/recipe_search.py``.

    python experiments/recipe_table.py --steps 1300 --num 2000            # the table in the README (hours)
    python experiments/recipe_table.py --preset tiny --steps 3 --num 16 --no-inception --nll-num 4 --nll-steps 4 \\
        --work /tmp/recipe-table-smoke --out /tmp/recipe-table-smoke/table.json    # what CI runs (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the shared harness
from harness import Candidate, Judge, draw, load_snapshot, train  # noqa: E402

from ddpmkit.eval.nll import evaluate_nll  # noqa: E402

RECIPES = {
    "preset": [],                                               # cosine, v-prediction, min-SNR-5, fixed variance
    "linear schedule": ["diffusion.schedule=linear"],
    "sigmoid schedule": ["diffusion.schedule=sigmoid"],
    "eps-prediction": ["diffusion.prediction=eps"],
    "min-SNR off": ["diffusion.min_snr_gamma=null"],
    "learned variance": ["diffusion.variance=learned_range"],   # hybrid loss, λ = 0.001
}
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"preset": args.preset, "steps": args.steps, "num": args.num,
                                    "sampler": f"{args.sampler}-{args.sample_steps}", "rows": rows}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mnist")
    p.add_argument("--only", default="", help="comma-separated recipes (default all): " + ", ".join(RECIPES))
    p.add_argument("--steps", type=int, default=None, help="training steps of every recipe (default the preset's)")
    p.add_argument("--num", type=int, default=2000, help="samples per FID")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--no-inception", action="store_true", help="classifier FID only (fast; smoke tests)")
    p.add_argument("--nll-num", type=int, default=200, help="held-out images in the bound")
    p.add_argument("--nll-steps", type=int, default=None, help="terms of the bound (default all T)")
    p.add_argument("--work", type=Path, default=Path("/tmp/recipe_table"))
    p.add_argument("--out", type=Path, default=RESULTS / "recipe_table.json")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n] or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    judge = Judge(inception=not args.no_inception)
    rows = []
    for name in names:
        candidate = Candidate(name, RECIPES[name], preset=args.preset)
        out = args.work / name.replace(" ", "-")
        snap = train(candidate, out, args.steps)[-1]
        model, diffusion = load_snapshot(out, snap["step"])
        start = time.perf_counter()
        scores = judge(draw(model, diffusion, args.num, args.sampler, args.sample_steps))
        nll, _ = evaluate_nll(out / "run", num=args.nll_num, steps=args.nll_steps, device="cpu", out=out / "nll",
                              progress=False)
        row = {"recipe": name, "overrides": RECIPES[name], **snap, "sampler": f"{args.sampler}-{args.sample_steps}",
               **scores, "score_seconds": time.perf_counter() - start, "bits_per_dim": nll.bits_per_dim,
               "bits_per_dim_se": nll.standard_error, "nll_num": nll.num, "nll_terms": nll.num_terms}
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(args, rows)  # after every recipe: a run cut short keeps the rows it finished
    fid_key = "cfid" if args.no_inception else "fid"
    print(f"\n| recipe | training min | {'classifier ' if args.no_inception else ''}FID (N={args.num}) | p>0.9 | "
          f"bits/dim (N={args.nll_num}) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['train_seconds'] / 60:.1f} | {r[fid_key]:.1f} | {100 * r['confident']:.1f}% | "
              f"{r['bits_per_dim']:.3f} ± {r['bits_per_dim_se']:.3f} |")


if __name__ == "__main__":
    main()
