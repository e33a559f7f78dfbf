"""Inception FID of generated images (an .npz from ``ddpmkit sample --npz``) against a named data set's training
images, with the floor at the same N: for sets without a test split (Pokémon, emoji), the training set is split
in two fixed halves A and B (seed 0); the score is FID(generated[:N], B) and the floor FID(A, B), N = |B|.

    .venv/bin/python benchmarks/fid_samples.py pokemon samples.npz --out benchmarks/results/pokemon64_fid.json

The images come from wherever they were made (a GPU machine, say); the features are computed here, with the pinned
Inception network (``ddpmkit eval fetch``). Writes the JSON given by ``--out`` and prints one line per score.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data import load_dataset
from ddpmkit.eval.fid import frechet_distance, gaussian_stats
from ddpmkit.eval.inception import InceptionFeatures


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of floor(n / 2) images each, from a fixed permutation."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return order[:half], order[half:2 * half]


def fid(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="named data set the model was trained on (pokemon, emoji, ...)")
    ap.add_argument("samples", type=Path, help=".npz with 'images' uint8 (N, H, W, C)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", default="", help="what made the samples (run, sampler, steps), stored in the JSON")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with np.load(args.samples, allow_pickle=False) as npz:
        generated = npz["images"]
    real = load_dataset(args.data, "train", None, progress=False).images
    a, b = halves(len(real))
    n = len(b)
    if len(generated) < n:
        raise SystemExit(f"{args.samples} holds {len(generated)} images; this score needs at least {n}")
    extractor = InceptionFeatures()
    t0 = time.perf_counter()
    feats = {name: extractor(images, progress=True)
             for name, images in (("generated", generated[:n]), ("A", real[a]), ("B", real[b]))}
    result = dict(data=args.data, samples=str(args.samples), label=args.label, n=n,
                  fid=fid(feats["generated"], feats["B"]), floor=fid(feats["A"], feats["B"]),
                  fid_against_A=fid(feats["generated"], feats["A"]),
                  protocol="generated[:N] vs training half B; floor: half A vs half B; halves from "
                           "numpy default_rng(0).permutation; Inception pool3 (pinned TF weights)",
                  seconds=round(time.perf_counter() - t0, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.data}: FID {result['fid']:.2f} (against the other half: {result['fid_against_A']:.2f}) at N = {n}; "
          f"floor (real half A vs half B) {result['floor']:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
