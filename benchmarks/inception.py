"""Inception feature speed (fp32 vs bf16, channels_last) and the pipeline's end-to-end floor on real MNIST.

    .venv/bin/python benchmarks/inception.py [--threads 2] [--out benchmarks/results/inception.json]

1. Throughput (images/s, 28x28 MNIST through resize + Inception) for fp32 / bf16 x contiguous /
   channels_last on the same batch.
2. Precision check: FID of MNIST train[:200] vs test[:200] with fp32 and with bf16 features. bf16 may be
   the default only if it moves this FID by less than 1%.
3. The floor: Inception FID and KID of real MNIST train[:500] vs test[:500] (fp32; shared/DATA.md
   measured 21.5 at N=500 with this network and resize), and the classifier-feature FID of
   train[:2000] vs test[:2000] plus the classifier's accuracy on the whole test set.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ddpmkit.data import load_dataset
from ddpmkit.eval import InceptionFeatures, MnistClassifier, fid_from_features, kid
from ddpmkit.eval.inception import DEFAULT_PRECISION


def throughput(extractor: InceptionFeatures, images: np.ndarray, repeats: int = 1) -> float:
    extractor(images[: extractor.batch_size], progress=False)  # warm-up (oneDNN picks kernels)
    start = time.perf_counter()
    for _ in range(repeats):
        extractor(images, progress=False)
    return repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-speed", type=int, default=64)
    parser.add_argument("--n-precision", type=int, default=200)
    parser.add_argument("--n-floor", type=int, default=500)
    parser.add_argument("--n-classifier", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/inception.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    train = load_dataset("mnist", split="train")
    test = load_dataset("mnist", split="test")
    result: dict = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "batch_size": args.batch_size,
    }

    # 1. throughput
    speed = {}
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            ext = InceptionFeatures(
                precision=precision, channels_last=channels_last, batch_size=args.batch_size
            )
            name = precision + ("+channels_last" if channels_last else "")
            speed[name] = throughput(ext, test.images[: args.n_speed])
            print(f"{name:20s} {speed[name]:6.2f} images/s", flush=True)
    result["images_per_s"] = speed

    # 2. precision check and 3. floor share the fp32 features
    n = max(args.n_floor, args.n_precision)
    fp32 = InceptionFeatures(precision="fp32", batch_size=args.batch_size)
    start = time.perf_counter()
    f_train, f_test = fp32(train.images[:n]), fp32(test.images[:n])
    result["fp32_seconds_per_image"] = (time.perf_counter() - start) / (2 * n)
    bf16_layout = speed["bf16+channels_last"] > speed["bf16"]
    bf16 = InceptionFeatures(precision="bf16", channels_last=bf16_layout, batch_size=args.batch_size)
    k = args.n_precision
    b_train, b_test = bf16(train.images[:k]), bf16(test.images[:k])
    fid32 = fid_from_features(f_train[:k], f_test[:k])
    fid16 = fid_from_features(b_train, b_test)
    change = abs(fid16 - fid32) / fid32
    result["precision_check"] = {
        "n": k,
        "fid_fp32": fid32,
        "fid_bf16": fid16,
        "relative_change": change,
        "max_abs_feature_diff": float(np.abs(b_train - f_train[:k]).max()),
        "bf16_passes": bool(change < 0.01),
        "default_precision": DEFAULT_PRECISION,
    }
    m = args.n_floor
    kid_floor = kid(f_train[:m], f_test[:m])
    result["floor_inception"] = {
        "n": m,
        "fid": fid_from_features(f_train[:m], f_test[:m]),
        "kid_mean": kid_floor.mean,
        "kid_std": kid_floor.std,
        "kid_subset_size": kid_floor.subset_size,
        "data_md_fid": 21.5,
    }

    clf = MnistClassifier()
    c = args.n_classifier
    start = time.perf_counter()
    feats_test, logits_test = clf.outputs(test.images, progress=False)
    clf_seconds = time.perf_counter() - start
    feats_train = clf(train.images[:c], progress=False)
    result["floor_classifier"] = {
        "n": c,
        "fid": fid_from_features(feats_train, feats_test[:c]),
        "test_accuracy": float((logits_test.argmax(1) == test.labels).mean()),
        "test_n": len(test.images),
        "images_per_s": len(test.images) / clf_seconds,
    }

    print("\n| setting | images/s |\n|---|---|")
    for name, value in speed.items():
        print(f"| {name} | {value:.2f} |")
    pc = result["precision_check"]
    print(
        f"\nFID train[:{k}] vs test[:{k}]: fp32 {fid32:.3f}, bf16 {fid16:.3f} ({100 * change:.2f}% change; "
        f"bf16 {'passes' if pc['bf16_passes'] else 'fails'} the <1% rule); "
        f"default precision: {DEFAULT_PRECISION}"
    )
    fl = result["floor_inception"]
    print(
        f"floor, Inception, N={m}: FID {fl['fid']:.2f} (DATA.md 21.5),",
        f"KID {fl['kid_mean']:.5f} ± {fl['kid_std']:.5f}",
    )
    fc = result["floor_classifier"]
    print(
        f"floor, classifier features, N={c}: FID {fc['fid']:.3f}; "
        f"classifier test accuracy {fc['test_accuracy']:.4f} (N={fc['test_n']})"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
