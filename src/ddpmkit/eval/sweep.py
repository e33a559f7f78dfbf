"""Steps-versus-quality sweeps, decoupled from models: a generator callable in, rows of numbers out.

``generate(num, sampler, steps, seed)`` returns uint8 NHWC images, or a mapping
``{"images": ..., "nfe": int, "labels": requested_labels}`` when it knows the number of model
evaluations or generated class-conditional samples. Each row records the wall time of generation
alone, N beside every score, and the reference it was scored against.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import DdpmkitError
from ..run import sweep_files
from .classifier import MnistClassifier, class_histogram, confident_share, label_accuracy
from .features import FeatureExtractor
from .images import as_uint8_nhwc
from .reference import ReferenceStats

Generator = Callable[[int, str, int, int], "np.ndarray | Mapping"]
INCEPTION_METRICS = ("fid", "kid")
CLASSIFIER_METRICS = ("cfid", "classes")  # classifier-feature FID; class histogram (+ accuracy)
ALL_METRICS = INCEPTION_METRICS + CLASSIFIER_METRICS


def check_metrics(metrics: Sequence[str]) -> None:
    """A one-line error for an empty list of metrics or one this module does not compute."""
    if not metrics:
        raise DdpmkitError(f"name at least one metric: {', '.join(ALL_METRICS)}")
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise DdpmkitError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")


DIGIT_DATA = ("mnist", "digits")  # handwritten digits: what the MNIST classifier's features and classes describe


def check_classifier_metrics(metrics: Sequence[str], spec: str) -> None:
    """The MNIST classifier's metrics only for handwritten digits: on other images they mean nothing."""
    asked = [m for m in metrics if m in CLASSIFIER_METRICS]
    if asked and spec.split(":")[0].lower() not in DIGIT_DATA:
        raise DdpmkitError(f"{', '.join(asked)} use(s) the MNIST digit classifier, which says nothing about "
                           f"{spec} images; use --metrics fid,kid")


def default_metrics(spec: str) -> tuple[str, ...]:
    """Inception FID/KID everywhere; the MNIST classifier metrics too for MNIST-like data."""
    return ALL_METRICS if spec.split(":")[0].lower() == "mnist" else INCEPTION_METRICS


def _references(reference: ReferenceStats | Mapping[str, ReferenceStats]) -> dict[str, ReferenceStats]:
    if isinstance(reference, ReferenceStats):
        return {"inception": reference}
    return dict(reference)


def _unpack(result: np.ndarray | Mapping) -> tuple[np.ndarray, int | None, np.ndarray | None]:
    if isinstance(result, Mapping):
        labels = result.get("labels")
        return result["images"], result.get("nfe"), None if labels is None else np.asarray(labels)
    return result, None, None


def score_images(
    images: np.ndarray,
    references: Mapping[str, ReferenceStats],
    metrics: Sequence[str],
    *,
    inception: FeatureExtractor | None = None,
    classifier: MnistClassifier | None = None,
    labels: np.ndarray | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    progress: bool = True,
) -> dict:
    """All requested metrics of one image set, each with the N it was computed on."""
    row: dict = {"num": len(images)}
    if any(m in metrics for m in INCEPTION_METRICS):
        ref = references["inception"]
        ref.check_compatible(inception)
        feats = inception(images, progress=progress)
        row.update(ref_n=ref.n, ref=ref.source, extractor=ref.extractor)
        if "fid" in metrics:
            row["fid"] = ref.fid(feats)
        if "kid" in metrics:
            result = ref.kid(feats, num_subsets=kid_subsets, subset_size=kid_subset_size)
            row.update(kid_mean=result.mean, kid_std=result.std, kid_subset_size=result.subset_size)
    if any(m in metrics for m in CLASSIFIER_METRICS):
        feats, logits = classifier.outputs(images, progress=progress)
        predicted = logits.argmax(axis=1)
        if "cfid" in metrics:
            ref = references["classifier"]
            ref.check_compatible(classifier)
            row.update(cfid=ref.fid(feats), cfid_ref_n=ref.n)
        if "classes" in metrics:
            hist = class_histogram(predicted)
            row.update({f"class_{k}": v for k, v in hist.items()})
            row["class_confident"] = confident_share(logits)
            if labels is not None:
                row["class_accuracy"] = label_accuracy(predicted, labels)
    return row


def run_sweep(
    generate: Generator,
    settings: list[dict],
    num: int,
    reference: ReferenceStats | Mapping[str, ReferenceStats],
    metrics: Sequence[str] = ("fid", "kid"),
    *,
    seed: int = 0,
    inception: FeatureExtractor | None = None,
    classifier: MnistClassifier | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    progress: bool = True,
) -> list[dict]:
    """Generate ``num`` images per setting, time it, score it; one row per setting.

    ``settings``: dicts with "sampler" and "steps" (other keys, e.g. "nfe", "eta", "guidance", are
    copied to the row; "nfe" is used when the generator does not report it; a setting's "guidance" is also
    passed to ``generate`` as the keyword ``guidance``). ``reference``: the
    Inception ``ReferenceStats``, or a mapping {"inception": ..., "classifier": ...}.
    Extractors are created on first need when not given (Inception: pinned weights, default precision).
    """
    check_metrics(metrics)
    references = _references(reference)
    if any(m in metrics for m in INCEPTION_METRICS) and "inception" not in references:
        raise DdpmkitError(
            "FID/KID need Inception reference statistics (reference_stats(spec, InceptionFeatures()))"
        )
    if "cfid" in metrics and "classifier" not in references:
        raise DdpmkitError(
            "cfid needs classifier reference statistics (reference_stats(spec, MnistClassifier()))"
        )
    if inception is None and any(m in metrics for m in INCEPTION_METRICS):
        from .inception import InceptionFeatures

        inception = InceptionFeatures()
    if classifier is None and any(m in metrics for m in CLASSIFIER_METRICS):
        classifier = MnistClassifier()

    rows = []
    for setting in tqdm(settings, desc="sweep", unit="setting", disable=not progress):
        sampler, steps = setting["sampler"], int(setting["steps"])
        start = time.perf_counter()
        extra = {"guidance": setting["guidance"]} if "guidance" in setting else {}
        images, nfe, labels = _unpack(generate(num, sampler, steps, seed, **extra))
        seconds = time.perf_counter() - start
        images = as_uint8_nhwc(images)
        row = dict(setting)
        row.update(
            sampler=sampler, steps=steps, seed=seed, seconds=seconds, images_per_s=len(images) / seconds
        )
        row["nfe"] = nfe if nfe is not None else setting.get("nfe")
        row.update(
            score_images(
                images,
                references,
                metrics,
                inception=inception,
                classifier=classifier,
                labels=labels,
                kid_subsets=kid_subsets,
                kid_subset_size=kid_subset_size,
                progress=progress,
            )
        )
        rows.append(row)
    return rows


def _fmt(value, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def sweep_markdown(rows: list[dict]) -> str:
    """A markdown table: one line per setting; N and the reference N in the header."""
    if not rows:
        return "(no rows)\n"
    columns = [
        ("sampler", "sampler", "s"),
        ("steps", "steps", "d"),
        *([("guidance", "guidance", ".1f")] if any(r.get("guidance") is not None for r in rows) else []),
        ("NFE", "nfe", "s"),
        ("seconds", "seconds", ".1f"),
        ("images/s", "images_per_s", ".1f"),
    ]
    optional = [
        ("FID", "fid", ".2f"),
        ("KID×10³", "kid_mean", None),
        ("classifier FID", "cfid", ".2f"),
        ("class acc.", "class_accuracy", ".3f"),
        ("class entropy", "class_entropy", ".3f"),
        ("min class share", "class_min_share", ".3f"),
        ("p > 0.9", "class_confident", ".3f"),
    ]
    columns += [c for c in optional if any(c[1] in r for r in rows)]
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for _, key, spec in columns:
            if key == "kid_mean":
                cells.append(
                    f"{1e3 * r['kid_mean']:.2f} ± {1e3 * r['kid_std']:.2f}" if "kid_mean" in r else "–"
                )
            elif key == "nfe":
                cells.append(str(r.get("nfe") if r.get("nfe") is not None else "–"))
            else:
                cells.append(_fmt(r.get(key), spec))
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    notes = [f"N = {first['num']} generated images per setting, seed {first.get('seed')}"]
    if "ref_n" in first:
        notes.append(f"Inception reference: {first['ref']} (N = {first['ref_n']}, {first['extractor']})")
    if "cfid_ref_n" in first:
        notes.append(f"classifier reference N = {first['cfid_ref_n']}")
    notes.append("FID is biased upward at small N: compare only rows with the same N and reference.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot_sweep(rows: list[dict], path: Path) -> Path | None:
    """Score against steps and against seconds, one line per sampler (or against guidance for a guidance sweep)."""
    key = next((k for k in ("fid", "cfid", "kid_mean") if any(k in r for r in rows)), None)
    by_guidance = len({r.get("guidance") for r in rows}) > 1
    if key is None and not (by_guidance and any("class_accuracy" in r for r in rows)):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if by_guidance:
        return _plot_guidance(rows, key, path, plt)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        sub = sorted((r for r in rows if r["sampler"] == sampler and key in r), key=lambda r: r["steps"])
        axes[0].plot([r["steps"] for r in sub], [r[key] for r in sub], "o-", label=sampler)
        axes[1].plot([r["seconds"] for r in sub], [r[key] for r in sub], "o-", label=sampler)
    for ax, xlabel in zip(axes, ("sampling steps", f"seconds for {rows[0]['num']} images")):
        xs = [x for line in ax.get_lines() for x in line.get_xdata()]
        if xs and min(xs) > 0 and max(xs) / min(xs) > 10:  # log only over a wide range (readable ticks)
            ax.set_xscale("log")
        ys = [y for line in ax.get_lines() for y in line.get_ydata()]
        if ys and min(ys) > 0 and max(ys) / min(ys) > 10:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{_AXIS_LABELS[key]} (N={rows[0]['num']})")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path, plt)


_AXIS_LABELS = {"fid": "FID", "cfid": "classifier FID", "kid_mean": "KID", "class_accuracy": "accuracy of the label"}


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_guidance(rows: list[dict], key: str | None, path: Path, plt) -> Path:
    """Quality and (conditional runs) the accuracy of the requested class against the guidance scale."""
    panels = ([key] if key else []) + (["class_accuracy"] if any("class_accuracy" in r for r in rows) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for name in dict.fromkeys(f"{r['sampler']}-{r['steps']}" for r in rows):
        sub = sorted((r for r in rows if f"{r['sampler']}-{r['steps']}" == name and r.get("guidance") is not None),
                     key=lambda r: r["guidance"])
        for ax, panel in zip(axes[0], panels):
            ax.plot([r["guidance"] for r in sub], [r.get(panel, math.nan) for r in sub], "o-", label=name)
    for ax, panel in zip(axes[0], panels):
        ax.set_xlabel("guidance scale w")
        ax.set_ylabel(f"{_AXIS_LABELS[panel]} (N={rows[0]['num']})")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path, plt)


def write_sweep_report(rows: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write ``sweep.json``, ``sweep.md``, ``sweep.png`` (quality vs steps and vs seconds) in ``out_dir``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = sweep_files(out_dir)
    paths["json"].write_text(json.dumps(rows, indent=2, default=_json_default) + "\n")
    paths["markdown"].write_text(sweep_markdown(rows))
    if plot_sweep(rows, paths.pop("plot")) is not None:
        paths["plot"] = sweep_files(out_dir)["plot"]
    return paths


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
