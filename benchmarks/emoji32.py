"""Colour on a CPU: the emoji32 preset's recipe, chosen by FID at equal training minutes, and its time to quality.

Candidates are the emoji32 preset with ``--set``-style overrides. Each one's training rate is measured first with
the real trainer (steps 10 to 40 of a short run, so warm-up is excluded), and each then trains for the same minutes
(``--minutes``), with EMA snapshots at sixths of the run (the harness's ``Snapshots``: the seconds exclude the
snapshotting). Every snapshot is scored the same way: N = 477 samples (seed 0) with the held-out images' own labels
(the categories are unbalanced: 59 % People & Body), the run's sampler (DDPM-50) and guidance ``--guidance``, Inception
FID against the held-out emoji test split at 32×32 (every 8th image of each category, never trained on), with the
floor (477 training images with the held-out images' category counts, against the same reference).

    python benchmarks/emoji32.py --candidates base32,base64,base64-flip --minutes 5 --last-only   # the recipe search
    python benchmarks/emoji32.py --candidates emoji32 --minutes 30                 # the preset's curve
    python benchmarks/emoji32.py --candidates base32 --minutes 0.2 --num 20 --no-inception --work /tmp/e32-smoke

A candidate that finished in ``--work`` with the same configuration is scored again, not retrained. Writes
benchmarks/results/emoji32_<candidates>.json and docs/emoji32_time_to_quality.png (with ``--plot``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from harness import Candidate, finished_training, load_snapshot, train

from ddpmkit.data import load_dataset
from ddpmkit.device import autocast_dtype, cpu_description
from ddpmkit.eval import InceptionFeatures, reference_stats
from ddpmkit.sampling import sample
from ddpmkit.viz import grid_image, to_uint8

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parent.parent / "docs"
SIZE = 32

CANDIDATES = {
    "emoji32": [],  # the preset as it ships
    "base32": ["model.overrides.base_channels=32"],
    "base48": ["model.overrides.base_channels=48"],
    "base64": ["model.overrides.base_channels=64"],
    "base64-flip": ["model.overrides.base_channels=64", "data.hflip=true"],
    "base48-flip": ["model.overrides.base_channels=48", "data.hflip=true"],
    "base48-batch64": ["model.overrides.base_channels=48", "train.batch_size=64"],
}
FRACTIONS = (1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0)


def candidate(name: str) -> Candidate:
    return Candidate(name, ["train.precision=auto", *CANDIDATES[name]], preset="emoji32")


def step_rate(cand: Candidate, work: Path, data) -> float:
    """Training steps/s of the real trainer, from its 10th to its 40th step."""
    rows = train(cand, work / f"rate-{cand.name}", steps=40, snapshot_fractions=(10 / 40, 1.0), data=data)
    return (rows[1]["step"] - rows[0]["step"]) / (rows[1]["train_seconds"] - rows[0]["train_seconds"])


def score(model, diffusion, labels: np.ndarray, guidance: float, inception, reference) -> tuple[dict, np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    images = []
    for start in range(0, len(labels), 256):
        chunk = torch.from_numpy(labels[start:start + 256])
        x = sample(model, diffusion, (len(chunk), 3, SIZE, SIZE), sampler="ddpm", steps=50, spacing="linspace",
                   model_kwargs={"labels": chunk}, guidance=guidance, generator=generator,
                   autocast_dtype=autocast_dtype("auto", torch.device("cpu")))
        images.append(to_uint8(x.clamp(-1, 1)))
    images = np.concatenate(images)
    row = {"num": len(images)}
    if inception is not None:
        row.update(fid=reference.fid(inception(images, progress=False)), fid_ref_n=reference.n)
    return row, images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", default="emoji32", help=f"comma-separated from {', '.join(CANDIDATES)}")
    p.add_argument("--minutes", type=float, default=30.0, help="training minutes each (at its measured rate)")
    p.add_argument("--num", type=int, default=None, help="samples per score (default: all 477 held-out images)")
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/ddpmkit-emoji32"))
    p.add_argument("--no-inception", action="store_true")
    p.add_argument("--out", type=Path, help="the JSON to write (default benchmarks/results/emoji32_<candidates>.json)")
    p.add_argument("--last-only", action="store_true", help="score only each candidate's last snapshot")
    p.add_argument("--plot", action="store_true", help="write docs/emoji32_time_to_quality.png and a sample grid")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_dataset("emoji", "train", SIZE, progress=False)
    held_out = load_dataset("emoji", "test", SIZE, progress=False)
    labels = held_out.labels[:args.num] if args.num else held_out.labels
    inception = None if args.no_inception else InceptionFeatures()
    reference = None if inception is None else reference_stats("emoji", inception, split="test", image_size=SIZE)
    floor_file = args.work / f"floor-{len(labels)}.json"  # the training images' FID, computed once per work folder
    if inception is not None and not floor_file.exists():
        # training images with the held-out labels' histogram: for each category, its first training images
        picks = np.concatenate([np.flatnonzero(data.labels == c)[:n] for c, n in
                                enumerate(np.bincount(labels, minlength=len(data.class_names)))])
        floor_file.write_text(json.dumps(reference.fid(inception(data.images[picks], progress=False))))
    floor = json.loads(floor_file.read_text()) if inception is not None else None
    print(f"floor ({len(labels)} training images, as many of each category as held out, against the held-out "
          f"{len(held_out)}): {floor}")

    rows, grids = [], {}
    for name in args.candidates.split(","):
        cand = candidate(name)
        rate_file = args.work / f"rate-{name}.json"
        if not rate_file.exists():
            rate_file.write_text(json.dumps({"steps_per_s": step_rate(cand, args.work, data)}))
        rate = json.loads(rate_file.read_text())["steps_per_s"]
        steps = max(6, round(args.minutes * 60 * rate))
        work = args.work / name
        snapshots = finished_training(cand, work, steps) or train(cand, work, steps, FRACTIONS, data=data)
        print(f"{name}: {rate:.2f} steps/s -> {steps} steps for {args.minutes:g} min", flush=True)
        for snap in snapshots[-1:] if args.last_only else snapshots:
            model, diffusion = load_snapshot(work, snap["step"])
            row, images = score(model, diffusion, labels, args.guidance, inception, reference)
            row.update(candidate=name, overrides=CANDIDATES[name], step=snap["step"], images=snap["images"],
                       minutes=snap["train_seconds"] / 60, steps_per_s=rate,
                       params=sum(p.numel() for p in model.parameters()))
            rows.append(row)
            grids[name] = images
            print(row, flush=True)
            (args.work / "rows.json").write_text(json.dumps(rows, indent=1))

    summary = {"cpu": cpu_description(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
               "minutes": args.minutes, "num": len(labels), "guidance": args.guidance, "floor": floor,
               "held_out": len(held_out), "rows": rows}
    out = args.out or RESULTS / f"emoji32_{args.candidates.replace(',', '_')}.json"
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    print("| candidate | params | steps | minutes | FID |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['candidate']} | {row['params'] / 1e6:.2f}M | {row['step']} | {row['minutes']:.1f} | "
              f"{row.get('fid', float('nan')):.1f} |")
    if args.plot:
        plot(rows, floor, DOCS / "emoji32_time_to_quality.png")
        last = args.candidates.split(",")[-1]
        by_class = np.argsort(labels, kind="stable")
        grid_image(grids[last][by_class][:: max(1, len(labels) // 100)][:100], nrow=10).save(
            DOCS / "emoji32_eval_samples.png")


def plot(rows: list[dict], floor: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["candidate"] for r in rows):
        mine = [r for r in rows if r["candidate"] == name and "fid" in r]
        ax.plot([r["minutes"] for r in mine], [r["fid"] for r in mine], marker="o", label=name)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label=f"floor {floor:.1f}")
    ax.set(xlabel="training minutes (2-core CPU)", ylabel="FID-477 against held-out emoji", yscale="log",
           title="emoji32: FID against training time")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
