"""How much Inception FID does a faint background haze cost? A lead for the default job's FID.

Our MNIST samples have few exactly-black pixels (about 26% at 28 px, against 82% in MNIST test[:2000]); most of
their background sits at 1–10 of 255, too faint to see and irrelevant to a digit classifier. This script puts the
same haze on real digits: real train[:N], and the same images with each black pixel replaced, with probability p,
by a value drawn from the faint pixels (1–40) of a sample grid; both scored by Inception FID against the cached
MNIST test[:2000] statistics.

    python experiments/background_haze.py --grid runs/mnist/samples/latest.png     # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ddpmkit.data import load_dataset
from ddpmkit.eval.inception import InceptionFeatures
from ddpmkit.eval.reference import reference_stats

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"  # each experiment's page and JSON


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", type=Path, required=True, help="a sample grid whose faint pixels give the haze")
    p.add_argument("--num", type=int, default=500, help="real training images scored")
    p.add_argument("--p", type=float, default=0.55, help="share of black pixels given a faint value")
    p.add_argument("--out", type=Path, default=RESULTS / "background_haze.json")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    grid = np.asarray(Image.open(args.grid).convert("L"))
    faint = grid[(grid >= 1) & (grid <= 40)]
    real = load_dataset("mnist", "train", 28, progress=False).images[: args.num]
    inception = InceptionFeatures()
    ref = reference_stats("mnist", inception, split="test", num=2000)
    rows = []
    for share in (0.0, args.p):
        hazy = real.copy()
        mask = (hazy == 0) & (rng.random(hazy.shape) < share)
        hazy[mask] = rng.choice(faint, size=int(mask.sum()))
        rows.append({"p": share, "num": args.num, "ref": "mnist test[:2000]", "zero_share": float((hazy == 0).mean()),
                     "faint_1_40_share": float(((hazy >= 1) & (hazy <= 40)).mean()),
                     "fid": ref.fid(inception(hazy, progress=True))})
        print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"grid": str(args.grid), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
