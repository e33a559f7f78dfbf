"""Few-step sampling on a trained run: Inception FID of every sampler at 5 to 50 model evaluations, and of
distilled students, each with its seconds per N images, against the best sampler (ancestral DDPM over 50 steps).

Every cell samples N class-balanced images (seed 0, the run's guidance, ``--precision auto``), times the generation
alone, and scores them against MNIST test[:2000] with the Inception features of ``ddpmkit eval`` (fp32 reference
statistics). ``--inception-precision bf16`` runs the sample features in bf16 (about 1.7x faster on a CPU with native
bf16); the DDPM-50 cell is then scored in fp32 too, so the table says how much that moves a FID. The floor is
MNIST train[:N] against the same reference, with the same features.

    python benchmarks/few_step.py runs/mnist                                      # the table (~1.5 h on 2 cores)
    python benchmarks/few_step.py runs/mnist --students runs/mnist-d4,runs/mnist-d1 --samplers unipc --nfe 1,2,4
    python benchmarks/few_step.py runs/tiny --num 8 --reference-num 16 --nfe 6 --samplers ddpm,restart \
        --work /tmp/fs --no-write                                                 # smoke test

Each cell's row goes to WORK/<sampler>-<nfe>.json (default benchmarks/results/few_step_cells/) as soon as it exists,
and a finished cell is not run again; all rows go to benchmarks/results/few_step.json, the table to stdout, the plot
to docs/few_step_fid.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ddpmkit.data import load_dataset
from ddpmkit.device import cpu_description
from ddpmkit.eval import InceptionFeatures, MnistClassifier, reference_stats
from ddpmkit.pipeline import Pipeline
from ddpmkit.request import SampleRequest, student_steps
from ddpmkit.sampling import SAMPLER_REGISTRY

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parents[1] / "docs"
SAMPLERS = ("ddpm", "unipc", "dpm++2m-sde", "heun", "edm", "restart")
NFES = (5, 8, 10, 15, 20, 50)
BASELINE = ("ddpm", 50)


class Scorer:
    """Inception FID (and the classifier's accuracy on the requested digit, which costs nothing) against MNIST
    test[:2000]."""

    def __init__(self, precision: str, reference_num: int = 2000):
        self.features = InceptionFeatures(precision=precision)
        self.precision = precision
        self.reference = reference_stats("mnist", InceptionFeatures(), split="test", num=reference_num)
        self.classifier = MnistClassifier()

    def __call__(self, images: np.ndarray, labels: np.ndarray | None, features=None) -> dict:
        row = {"fid": self.reference.fid((features or self.features)(images, progress=False))}
        if labels is not None:
            _, logits = self.classifier.outputs(images, progress=False)
            row["accuracy"] = float((logits.argmax(1) == labels).mean())
        return row


def cell(work: Path, name: str, compute) -> dict:
    """A cell's row from WORK/<name>.json, computed and written there first if missing."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    row = compute()
    path.write_text(json.dumps(row, indent=1))
    return row


def sample_cell(pipe: Pipeline, score: Scorer, num: int, sampler: str | None, nfe: int | None, label: str,
                cross_check: bool = False) -> dict:
    request = SampleRequest(num=num, sampler=sampler, steps=nfe, seed=0, batch_size=250).resolve(pipe.info)
    start = time.perf_counter()
    images = pipe.generate(request, progress=False)
    seconds = time.perf_counter() - start
    labels = None if request.labels is None else np.asarray(request.labels)
    row = {"sampler": label, "nfe": request.steps, "num": num, "seconds": round(seconds, 1),
           "spacing": request.spacing, "guidance": request.guidance, **score(images, labels)}
    if cross_check and score.precision != "fp32":
        row["fid_fp32_features"] = score(images, labels, features=InceptionFeatures())["fid"]
    print(f"{label:>14} {request.steps:>3} NFE  FID {row['fid']:7.2f}  {seconds:6.1f} s", flush=True)
    return row


def floor(score: Scorer, num: int) -> float:
    """FID of real MNIST train[:num] against the test[:2000] reference, with the cells' features."""
    real = load_dataset("mnist", "train", progress=False).images[:num]
    return score(np.asarray(real), None)["fid"]


def markdown(rows: list[dict], baseline: float, floor_fid: float, num: int) -> str:
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    nfes = sorted({r["nfe"] for r in rows})
    by = {(r["sampler"], r["nfe"]): r for r in rows}
    lines = [f"Inception FID (N = {num:,}; floor {floor_fid:.1f}; DDPM-50 {baseline:.2f}, target ≤ "
             f"{1.1 * baseline:.2f}); seconds per {num:,} images in brackets", "",
             "| sampler | " + " | ".join(f"{n} NFE" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for s in samplers:
        cells = []
        for n in nfes:
            r = by.get((s, n))
            mark = "**" if r and r["fid"] <= 1.1 * baseline else ""
            cells.append(f"{mark}{r['fid']:.1f}{mark} ({r['seconds']:.0f} s)" if r else "—")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], baseline: float, floor_fid: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in dict.fromkeys(r["sampler"] for r in rows):
        pts = sorted((r["nfe"], r["seconds"], r["fid"]) for r in rows if r["sampler"] == s)
        style = "s--" if s.startswith("student") else "o-"
        axes[0].plot([p[0] for p in pts], [p[2] for p in pts], style, label=s)
        axes[1].plot([p[1] for p in pts], [p[2] for p in pts], style, label=s)
    for ax, xlabel in zip(axes, ("model evaluations (NFE)", "seconds per 2,000 images")):
        ax.axhline(1.1 * baseline, color="k", ls=":", lw=1, label="DDPM-50 + 10 %")
        ax.axhline(floor_fid, color="grey", ls="-.", lw=1, label="floor (real data)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Inception FID")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle("Few-step sampling on the default MNIST model")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default="runs/mnist")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--nfe", default=",".join(map(str, NFES)))
    parser.add_argument("--students", default="", help="comma-separated distilled runs, sampled at their own steps")
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--reference-num", type=int, default=2000, help="MNIST test images in the reference")
    parser.add_argument("--inception-precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--work", default=str(RESULTS / "few_step_cells"))
    parser.add_argument("--no-write", action="store_true", help="leave benchmarks/results and docs alone")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    score = Scorer(args.inception_precision, args.reference_num)
    pipe = Pipeline.from_run(args.run)
    rows = []
    for sampler in args.samplers.split(","):
        for nfe in map(int, args.nfe.split(",")):
            if sampler and nfe < SAMPLER_REGISTRY[sampler].min_steps:
                print(f"{sampler} needs at least {SAMPLER_REGISTRY[sampler].min_steps} evaluations: no {nfe}")
                continue
            rows.append(cell(work, f"{sampler}-{nfe}", lambda s=sampler, n=nfe: sample_cell(
                pipe, score, args.num, s, n, s, cross_check=(s, n) == BASELINE)))
    for student in filter(None, args.students.split(",")):
        student_pipe = Pipeline.from_run(student)
        k = student_steps(student_pipe.info)
        rows.append(cell(work, f"student-{k}", lambda p=student_pipe: sample_cell(p, score, args.num, None, None,
                                                                                  "student (distilled)")))
    floor_fid = cell(work, f"floor-{args.num}", lambda: {"fid": floor(score, args.num)})["fid"]
    base = next((r["fid"] for r in rows if (r["sampler"], r["nfe"]) == BASELINE), float("nan"))
    table = markdown(rows, base, floor_fid, args.num)
    print(table)
    if args.no_write:
        return
    result = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_description(), "threads": os.environ.get(
        "OMP_NUM_THREADS"), "run": args.run, "num": args.num, "inception_precision": args.inception_precision,
        "floor": floor_fid, "baseline": {"sampler": BASELINE[0], "nfe": BASELINE[1], "fid": base}, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "few_step.json").write_text(json.dumps(result, indent=1))
    plot(rows, base, floor_fid, DOCS / "few_step_fid.png")
    print(f"wrote {RESULTS / 'few_step.json'} and {DOCS / 'few_step_fid.png'}")


if __name__ == "__main__":
    main()
