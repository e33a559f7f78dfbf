"""Which recipe should the default job train? Candidates on one budget of training images, scored on one footing.

Every candidate trains the mnist preset's UNet for ``--steps`` steps of 64 images (the default job's budget is
1,300; the search may use a fraction of it, the schedule's warm-up and cosine decay scale with it), keeps extra
EMAs of its weights beside the preset's (one run answers "which EMA decay?"), and is scored from each EMA by the
pinned MNIST classifier: classifier-feature FID against MNIST test[:2000] (the fast proxy for Inception FID), the
share of samples classified with p > 0.9, and the class balance. All candidates have the same UNet, so their
step costs are equal and the budget in images is a budget in CPU time.

Run candidates as separate processes (one thread each, two at a time on two cores) and merge:

    OMP_NUM_THREADS=1 python experiments/recipe_search.py --only base --steps 650 &
    OMP_NUM_THREADS=1 python experiments/recipe_search.py --only edm --steps 650 &
    python experiments/recipe_search.py --table            # merge into docs/experiments/recipe_search.json

The full-budget confirmation (docs/experiments/recipe_search_full.json) ran the same way with ``--steps 1300``
(``2600`` for the batch-32 candidate), ``--main-ema-only --sample-steps 20 --work /tmp/rsfull`` and
``--table --work /tmp/rsfull --results recipe_search_full.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the shared harness
from harness import Candidate, Judge, draw, load_snapshot, train  # noqa: E402

# The search ran on the preset as it was then, with uniform training timesteps; the candidates spell that out, so
# they stay the recipes that were measured whatever the preset draws.
UNIFORM = ["train.timestep_sampler=uniform"]
LOGNORMAL0 = ["train.timestep_sampler=log-normal", "train.log_sigma_mean=0.0", "train.log_sigma_std=1.2"]
CANDIDATES = {
    "base": Candidate("base", UNIFORM),                    # the preset as it was (v, min-SNR-5, lr 1e-3, uniform t)
    # EDM (Karras et al. 2022): ln σ ~ N(-1.2, 1.2²) and an unweighted loss on the preconditioned output. With
    # σ_data = 1 that output is exactly -v (c_skip = 1/(1+σ²), c_out = σ/√(1+σ²)), so "EDM" here is v-prediction,
    # no min-SNR weighting, log-normal t.
    "edm": Candidate("edm", ["train.timestep_sampler=log-normal", "train.log_sigma_mean=-1.2",
                             "diffusion.min_snr_gamma=null"]),
    "edm-minsnr": Candidate("edm-minsnr", ["train.timestep_sampler=log-normal", "train.log_sigma_mean=-1.2"]),
    "lr2e-3": Candidate("lr2e-3", UNIFORM + ["train.lr=2e-3"]),
    # the other way from EDM: more weight on high noise levels, where a digit's shape is decided
    "v-plain": Candidate("v-plain", UNIFORM + ["diffusion.min_snr_gamma=null"]),      # unweighted v, uniform t
    "lognormal0": Candidate("lognormal0", LOGNORMAL0 + ["diffusion.min_snr_gamma=null"]),   # median σ = 1
    "beta2-0.99": Candidate("beta2-0.99", UNIFORM + ["train.betas=[0.9,0.99]"]),  # lucidrains' and EDM2's Adam β2
    "lognormal0-minsnr": Candidate("lognormal0-minsnr", LOGNORMAL0),             # won the proxy, lost Inception FID
    "lr3e-3": Candidate("lr3e-3", UNIFORM + ["train.lr=3e-3"]),
    # half the batch, twice the steps (run with --steps 2600 for the default budget of images): on this CPU a
    # batch of 32 trains about as many images/s as one of 64, and early in training more updates teach more
    "lognormal0-minsnr-b32": Candidate("lognormal0-minsnr-b32", LOGNORMAL0 + ["train.batch_size=32",
                                                                              "train.warmup_steps=100"]),
}
EXTRA_EMAS = {"raw": (0.0, False), "ema0.99": (0.99, False), "ema0.995": (0.995, False), "ema0.998w": (0.998, True)}
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="one candidate: " + ", ".join(CANDIDATES))
    p.add_argument("--steps", type=int, default=1300)
    p.add_argument("--num", type=int, default=1000, help="samples scored per snapshot")
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--work", type=Path, default=Path("/tmp/recipe_search"))
    p.add_argument("--table", action="store_true", help="merge the candidates' rows")
    p.add_argument("--results", default="recipe_search.json", help="file under docs/experiments/ that --table writes")
    p.add_argument("--main-ema-only", action="store_true", help="score only the preset's EMA (faster)")
    args = p.parse_args()
    if args.table:
        rows = [json.loads(f.read_text()) for f in sorted(args.work.glob("*/score.json"))]
        out = RESULTS / args.results
        out.write_text(json.dumps(rows, indent=1))
        print("| candidate | weights | steps | cFID | p>0.9 | smallest class |\n|---|---|---|---|---|---|")
        for cand in rows:
            for r in cand["scores"]:
                print(f"| {cand['name']} | {r['weights']} | {r['step']} | {r['cfid']:.1f} | "
                      f"{100 * r['confident']:.1f}% | {100 * r['smallest_class_share']:.1f}% |")
        return
    candidate = CANDIDATES[args.only]
    out = args.work / candidate.name
    snaps = train(candidate, out, args.steps, (0.5, 1.0), EXTRA_EMAS)
    judge = Judge()
    scores = []
    for snap in snaps:
        labels = snap["weights"] if snap is snaps[-1] and not args.main_ema_only else ["ema"]
        for label in labels:
            model, diffusion = load_snapshot(out, snap["step"], label)
            start = time.perf_counter()
            images = draw(model, diffusion, args.num, args.sampler, args.sample_steps)
            row = {"step": snap["step"], "images": snap["images"], "train_seconds": snap["train_seconds"],
                   "weights": label, "sampler": f"{args.sampler}-{args.sample_steps}", **judge(images),
                   "sample_seconds": time.perf_counter() - start}
            scores.append(row)
            print(json.dumps(row), flush=True)
    (out / "score.json").write_text(json.dumps({"name": candidate.name, "overrides": candidate.overrides,
                                                "steps": args.steps, "scores": scores}, indent=1))


if __name__ == "__main__":
    main()
