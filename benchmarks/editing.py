"""Editing on a trained MNIST run, measured: inpainting, SDEdit on degraded digits, and DDIM inversion.

(a) Inpainting: MNIST test digits (from index 2000 on, so none is in the FID reference) with the lower half masked,
    conditioned on the true label and unconditioned (guidance 0). RePaint (25 steps, jump length 5, resampled 5
    times) against plain replacement at the same number of model evaluations (ancestral DDPM over as many steps).
    Scores: the pinned MNIST classifier's accuracy on the completed digits against their true labels, and the
    Inception FID of the completions against MNIST test[:2000], with the floor (the same digits unmasked).
(b) SDEdit: the same digits blurred (Gaussian, radius 1.5 px) or drawn coarsely (7×7 blocks), then img2img with
    the run's DDPM-50, unconditioned, over strengths: realism (FID) against faithfulness (RMS distance to the input,
    and to the clean digit), and the classifier's accuracy.
(c) DDIM inversion: invert test digits and draw them back with DDIM over the same K steps, unconditioned,
    no clipping: the RMS round-trip error (pixels in [0, 1]) against K.

    python benchmarks/editing.py runs/mnist                    # the measurement (~30 min on 2 cores)
    python benchmarks/editing.py runs/mnist --num 16 --invert-num 4 --no-inception --work /tmp/edit-smoke  # smoke

Each part's numbers go to WORK/<part>.json as soon as they exist (a part that finished is not run again), then
all to benchmarks/results/editing.json, with pictures under docs/ (``--pictures``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from ddpmkit.data import load_dataset
from ddpmkit.device import cpu_description
from ddpmkit.editing import reconstruct, repaint_path
from ddpmkit.editing.inputs import region_mask
from ddpmkit.eval import InceptionFeatures, MnistClassifier, reference_stats
from ddpmkit.pipeline import Pipeline
from ddpmkit.request import SampleRequest
from ddpmkit.viz import grid_image, to_uint8

RESULTS = Path(__file__).parent / "results"
DOCS = Path(__file__).parents[1] / "docs"
FIRST = 2000  # test digits from here on: outside the FID reference test[:2000]
REPAINT = dict(steps=25, jump_length=5, resample=5)


class Scorer:
    """Classifier accuracy against true labels and classifier FID (fast) always; Inception FID where asked (slow on
    a CPU: about 2 minutes per 500 images on 2 cores). Both FIDs are against MNIST test[:2000]."""

    def __init__(self, inception: bool):
        self.classifier = MnistClassifier()
        self.classifier_reference = reference_stats("mnist", self.classifier, split="test", num=2000, progress=False)
        self.inception = InceptionFeatures() if inception else None
        self.reference = reference_stats("mnist", self.inception, split="test", num=2000) if inception else None

    def __call__(self, images: np.ndarray, labels: np.ndarray, inception: bool = True) -> dict:
        features, logits = self.classifier.outputs(images, progress=False)
        row = {"accuracy": float((logits.argmax(1) == labels).mean()), "cfid": self.classifier_reference.fid(features)}
        if inception and self.inception is not None:
            row["fid"] = self.reference.fid(self.inception(images, progress=False))
        return row


def downs(path: list[int]) -> int:
    return sum(1 for a, b in zip(path, path[1:]) if b < a)


def part(work: Path, name: str, compute) -> dict:
    """A part's results from WORK/<name>.json, computed and written there first if missing."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = compute()
    result["seconds"] = round(time.perf_counter() - start, 1)
    path.write_text(json.dumps(result, indent=1))
    return result


def inpainting(pipe: Pipeline, images: np.ndarray, labels: np.ndarray, score: Scorer, batch: int,
               show: list[int]) -> dict:
    mask = region_mask("lower-half", images.shape[1])
    nfe = downs(repaint_path(REPAINT["steps"], REPAINT["jump_length"], REPAINT["resample"]))
    masked = images * (1 - mask)[None, :, :, None]
    rows = {"nfe": nfe, "masked_input": score(masked.astype(np.uint8), labels, inception=False)}
    examples = {}
    for condition in ("label", "unconditional"):
        for method, request_steps, jump, resample in (("replacement", nfe, 10, 1),
                                                      ("repaint", REPAINT["steps"], REPAINT["jump_length"],
                                                       REPAINT["resample"])):
            request = SampleRequest(num=len(images), sampler="ddpm", steps=request_steps, seed=0, batch_size=batch,
                                    labels=tuple(int(v) for v in labels) if condition == "label" else None)
            start = time.perf_counter()
            out = pipe.inpaint(images, mask, request, jump_length=jump, resample=resample, progress=True)
            row = score(out, labels)
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows[f"{method}/{condition}"] = row
            examples[f"{method}/{condition}"] = out
            print(f"inpaint {method:11s} {condition:13s} {row}", flush=True)
    return {"results": rows, "examples": {k: v[show].tolist() for k, v in examples.items()}}


def degrade(images: np.ndarray, how: str) -> np.ndarray:
    """Blurred (Gaussian, radius 1.5) or coarse (mean over 4×4 blocks, shown as 7×7 squares) digits."""
    out = []
    for image in images[..., 0]:
        pil = Image.fromarray(image)
        if how == "blur":
            pil = pil.filter(ImageFilter.GaussianBlur(1.5))
        else:
            pil = pil.resize((7, 7), Image.BOX).resize((28, 28), Image.NEAREST)
        out.append(np.asarray(pil))
    return np.stack(out)[..., None]


def rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference of two uint8 image sets, pixels in [0, 1]."""
    return float(np.sqrt((((a.astype(np.float64) - b.astype(np.float64)) / 255.0) ** 2).mean()))


def sdedit(pipe: Pipeline, images: np.ndarray, labels: np.ndarray, score: Scorer, strengths: list[float],
           batch: int, show: list[int]) -> dict:
    rows, examples = [], {}
    for how in ("blur", "coarse"):
        inputs = degrade(images, how)
        examples[how] = {"input": inputs[show].tolist()}
        for strength in strengths:
            request = SampleRequest(num=len(images), seed=0, batch_size=batch)  # the run's sampler, unconditioned
            out = inputs if strength == 0 else pipe.img2img(inputs, strength, request, progress=True)
            row = {"degradation": how, "strength": strength, "nfe": int(strength * 50),
                   "rms_to_input": rms(out, inputs), "rms_to_clean": rms(out, images),
                   **score(out, labels, inception=False)}
            rows.append(row)
            examples[how][str(strength)] = out[show].tolist()
            print(f"sdedit {how:6s} {strength:.2f} {row}", flush=True)
    return {"results": rows, "examples": examples}


def inversion(pipe: Pipeline, images: np.ndarray, steps_list: list[int]) -> dict:
    rows = []
    x0 = images.astype(np.float64) / 255.0
    for steps in steps_list:
        request = SampleRequest(num=len(images), sampler="ddim", steps=steps, seed=0)
        latent = pipe.invert(images, request)
        back = reconstruct(pipe.model, pipe.diffusion, latent.to(pipe.device), steps, request.spacing,
                           {"labels": torch.zeros(len(images), dtype=torch.long)} if pipe.num_classes else None,
                           0.0 if pipe.num_classes else None, device=pipe.device, autocast_dtype=pipe.amp_dtype)
        recon = to_uint8(back.cpu().clamp(-1, 1))
        error = float(np.sqrt(((recon.astype(np.float64) / 255.0 - x0) ** 2).mean()))
        rows.append({"steps": steps, "nfe": 2 * steps, "rms": error,
                     "latent_std": float(latent.std()), "latent_mean": float(latent.mean())})
        print(f"invert {steps:4d} steps: rms {error:.4f}, latent std {float(latent.std()):.3f}", flush=True)
    return {"results": rows}


def pictures(results: dict, images: np.ndarray, pipe: Pipeline) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inp = results["inpaint"]
    mask = region_mask("lower-half", 28)
    masked = (images * (1 - mask)[None, :, :, None]).astype(np.uint8)
    shown = [images, masked] + [np.asarray(inp["examples"][k], dtype=np.uint8)
                                      for k in ("replacement/label", "repaint/label", "replacement/unconditional",
                                                "repaint/unconditional")]
    grid_image(np.concatenate(shown), nrow=10, row_labels=["original", "masked", "replace, label", "RePaint, label",
                                                           "replace, none", "RePaint, none"]).save(
        DOCS / "editing_inpaint.png")

    sd = results["sdedit"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for how, marker in (("blur", "o"), ("coarse", "s")):
        rows = [r for r in sd["results"] if r["degradation"] == how]
        axes[0].plot([r["rms_to_input"] for r in rows], [r["cfid"] for r in rows], marker=marker, label=how)
        for r in rows:
            axes[0].annotate(f"{r['strength']:g}", (r["rms_to_input"], r["cfid"]), textcoords="offset points",
                             xytext=(4, 4), fontsize=8)
        axes[1].plot([r["strength"] for r in rows], [100 * r["accuracy"] for r in rows], marker=marker, label=how)
    axes[0].set(xlabel="RMS distance to the degraded input (pixels in [0, 1])",
                ylabel="classifier FID against test[:2000]",
                title="SDEdit: realism against faithfulness (labels: strength)", yscale="log")
    axes[1].set(xlabel="strength", ylabel="classifier accuracy (%)", title="the true digit recovered")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "editing_sdedit.png", dpi=110)
    plt.close(fig)
    coarse = sd["examples"]["coarse"]
    keys = ["input", *[k for k in coarse if k != "input" and float(k) > 0]]
    grid_image(np.concatenate([np.asarray(coarse[k], dtype=np.uint8) for k in keys]), nrow=10,
               row_labels=["coarse input", *[f"strength {float(k):g}" for k in keys[1:]]]).save(
        DOCS / "editing_sdedit_examples.png")

    inv = results["invert"]["results"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.loglog([r["steps"] for r in inv], [r["rms"] for r in inv], marker="o")
    ax.set(xlabel="DDIM steps K (each way)", ylabel="RMS round-trip error", title="DDIM inversion then DDIM")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(DOCS / "editing_inversion.png", dpi=110)
    plt.close(fig)

    rows = [pipe.interpolate(images[i], images[j], 8, SampleRequest(steps=50)) for i, j in ((0, 1), (2, 3), (4, 5))]
    grid_image(np.concatenate([np.concatenate([images[i:i + 1], r, images[j:j + 1]]) for (i, j), r in
                               zip(((0, 1), (2, 3), (4, 5)), rows)]), nrow=10).save(DOCS / "editing_interpolate.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--num", type=int, default=500, help="test digits for inpainting and SDEdit (FID's N)")
    p.add_argument("--invert-num", type=int, default=100)
    p.add_argument("--strengths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--invert-steps", default="10,25,50,100")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--work", type=Path, default=Path("/tmp/ddpmkit-editing"))
    p.add_argument("--no-inception", action="store_true")
    p.add_argument("--pictures", action="store_true", help="write the pictures under docs/")
    p.add_argument("--out", type=Path, default=RESULTS / "editing.json")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    pipe = Pipeline.from_run(args.run)
    test = load_dataset("mnist", "test", progress=False)
    images, labels = test.images[FIRST:FIRST + args.num], test.labels[FIRST:FIRST + args.num]
    score = Scorer(not args.no_inception)
    # the pictures show the first test digit of each class (or the first ten where a class is missing)
    show = [int(np.flatnonzero(labels == k)[0]) for k in range(10)] if set(labels) >= set(range(10)) else \
        list(range(min(10, len(labels))))
    floor = part(args.work, "floor", lambda: score(images, labels))  # the same digits, unedited
    results = {
        "floor": floor,
        "inpaint": part(args.work, "inpaint", lambda: inpainting(pipe, images, labels, score, args.batch, show)),
        "sdedit": part(args.work, "sdedit", lambda: sdedit(pipe, images, labels, score,
                                                          [float(s) for s in args.strengths.split(",")], args.batch,
                                                          show)),
        "invert": part(args.work, "invert", lambda: inversion(
            pipe, test.images[FIRST:FIRST + args.invert_num], [int(s) for s in args.invert_steps.split(",")])),
    }
    meta = {"run": str(args.run), "checkpoint": str(pipe.checkpoint), "num": args.num, "invert_num": args.invert_num,
            "repaint": REPAINT, "cpu": cpu_description(), "threads": torch.get_num_threads(),
            "precision": str(pipe.amp_dtype), "date": time.strftime("%Y-%m-%d")}
    if args.pictures:
        pictures(results, images[show], pipe)
    summary = {"meta": meta, "floor": floor, "inpaint": results["inpaint"]["results"],
               "sdedit": results["sdedit"]["results"], "invert": results["invert"]["results"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"\nN = {args.num}; floor (the same test digits, unedited): {floor}")
    print("| inpainting, lower half | accuracy | classifier FID | FID |\n|---|---|---|---|")
    for key, row in summary["inpaint"].items():
        if isinstance(row, dict):
            print(f"| {key} | {100 * row['accuracy']:.1f} % | {row.get('cfid', float('nan')):.2f} | "
                  f"{row.get('fid', float('nan')):.1f} |")
    print("\n| SDEdit | strength | NFE | RMS to input | RMS to clean | accuracy | classifier FID |\n"
          "|---|---|---|---|---|---|---|")
    for r in summary["sdedit"]:
        print(f"| {r['degradation']} | {r['strength']:g} | {r['nfe']} | {r['rms_to_input']:.3f} | "
              f"{r['rms_to_clean']:.3f} | {100 * r['accuracy']:.1f} % | {r['cfid']:.2f} |")
    print("\n| DDIM inversion K | NFE | RMS round trip |\n|---|---|---|")
    for r in summary["invert"]:
        print(f"| {r['steps']} | {r['nfe']} | {r['rms']:.4f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
