"""Training images/s of the default job at batch 32 against batch 64 and the earlier unconditional default, in one run.

The budget is the same number of training images in no more wall time than the earlier default job took (the
unconditional recipe, now ``--preset mnist-uncond``): halving the batch doubles the optimizer
steps and EMA updates, so the cost per image can only be measured. Each round trains every recipe for
the same number of images (``--images``) with ``ddpmkit train`` (a fresh run each, no sample grid but the final
one), rotating which goes first; the images/s are the medians of the job's own metric rows (hooks excluded),
and the wall seconds are those the job prints for its steps (the final grid and checkpoint included).

    python experiments/default_batch_speed.py                  # 3 rounds of 16,640 images (1/5 of the job) each
    python experiments/default_batch_speed.py --images 640 --rounds 1 --work /tmp/bs-smoke   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from ddpmkit.device import cpu_description

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON
RECIPES = {  # name -> (preset, batch size, extra overrides); everything else as the preset
    "mnist, batch 32 (the default)": ("mnist", 32, ["train.warmup_steps=100"]),
    "mnist, batch 64 (before)": ("mnist", 64, ["train.warmup_steps=50"]),
    "mnist-uncond (the default when issue 9 was filed)": ("mnist-uncond", 64, []),
}
BASE = "mnist-uncond (the default when issue 9 was filed)"


def run_once(name: str, images: int, out: Path, precision: str) -> dict:
    preset, batch, extra = RECIPES[name]
    steps = images // batch
    cmd = [sys.executable, "-m", "ddpmkit", "train", "--preset", preset, "--out", str(out), "--no-progress",
           "--precision", precision, "--steps", str(steps), "--batch-size", str(batch),
           "--set", f"train.sample_every={steps}", "--set", "train.log_every=20"]
    cmd += [a for o in extra for a in ("--set", o)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = float(re.search(r"trained \d+ steps in (\d+) s", text).group(1))
    with open(out / "metrics.csv") as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f) if r.get("images_per_s")]
    return {"recipe": name, "steps": steps, "images": steps * batch, "wall_seconds": wall,
            "images_per_s": statistics.median(rates[1:] or rates)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16_640, help="training images per run (default: 1/5 of the job)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="fp32", help="fp32 (default: comparable across CPUs) or auto")
    p.add_argument("--work", type=Path, default=Path("/tmp/default_batch_speed"))
    p.add_argument("--out", type=Path, default=RESULTS / "default_batch_speed.json")
    args = p.parse_args()
    rows = []
    for k in range(args.rounds):
        names = list(RECIPES)
        order = names[k % len(names):] + names[:k % len(names)]
        for name in order:
            out = args.work / f"r{k}-{RECIPES[name][0]}-{RECIPES[name][1]}"
            row = {"round": k, **run_once(name, args.images, out, args.precision)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {"cpu": cpu_description(), "precision": args.precision, "command": " ".join(sys.argv), "rows": rows}
    print(f"\n| recipe | images/s (median of rounds) | wall s (median) | wall against {BASE}, per round |")
    print("|---|---|---|---|")
    base = {r["round"]: r for r in rows if r["recipe"] == BASE}
    for name in RECIPES:
        mine = {r["round"]: r for r in rows if r["recipe"] == name}
        ratios = [mine[k]["wall_seconds"] / base[k]["wall_seconds"] for k in sorted(mine)]
        summary[name] = {"images_per_s": statistics.median(r["images_per_s"] for r in mine.values()),
                         "wall_seconds": statistics.median(r["wall_seconds"] for r in mine.values()),
                         "wall_ratio_to_base_per_round": ratios}
        print(f"| {name} | {summary[name]['images_per_s']:.1f} | {summary[name]['wall_seconds']:.0f} | "
              f"{', '.join(f'{r:.3f}' for r in ratios)} |")
    print(summary["cpu"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
