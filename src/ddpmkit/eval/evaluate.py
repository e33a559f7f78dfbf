"""``evaluate_run``: the steps-versus-quality table of a trained run (what ``ddpmkit eval`` prints).

For each sampler x step count it generates ``num`` images from the run's EMA weights (one seed for all
settings, so the settings differ only in the sampler), times the generation, and scores the images
against cached reference statistics of the data set the run was trained on (see ``sweep.run_sweep``).
Every argument is checked before any weights or reference statistics are loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DdpmkitError
from .sweep import (
    CLASSIFIER_METRICS,
    INCEPTION_METRICS,
    check_classifier_metrics,
    check_metrics,
    default_metrics,
    sweep_markdown,
)


@dataclass
class EvalResult:
    """The rows of the sweep (one dict per setting) and the report files written (json, markdown, plot)."""

    rows: list[dict]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def markdown(self) -> str:
        return sweep_markdown(self.rows)


def evaluate_run(
    run: str | Path,
    samplers: Sequence[str] = ("ddim", "dpm++2m"),
    steps: Sequence[int] = (10, 20, 50, 100),
    num: int = 500,
    eta: float = 0.0,
    guidance: Sequence[float] | None = None,
    metrics: Sequence[str] | None = None,
    ref_num: int = 2000,
    ref_split: str = "test",
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "auto",
    inception_path: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    clip_denoised: bool | None = None,
) -> EvalResult:
    """Sample ``run`` (a run folder, its checkpoints/ folder or one checkpoint) with every sampler x steps
    setting, score each set of ``num`` images, and write sweep.json, sweep.md and sweep.png.

    ``guidance``: classifier-free guidance scales to sweep too (conditional runs; each setting is sampled at each
    scale, with class-balanced labels, and the class accuracy is the share classified as the requested label;
    none: the run's ``train.sample_guidance``).
    ``metrics``: from fid, kid (Inception), cfid, classes (MNIST classifier); default by data set. The
    reference is the first ``ref_num`` images of ``ref_split`` ("train" when the data set has no such split).
    ``clip_denoised``: clip x̂_0 to [-1, 1] at every step (None: as the run was trained; recorded in each row).
    The report goes to ``out``, else the run folder's eval/ (``RunFolder.eval_dir``).
    """
    from ..atomic import check_writable
    from ..data import SPLITS
    from ..request import SampleRequest
    from ..run import RunFolder

    if num < 2 or ref_num < 2:
        raise DdpmkitError(f"num and ref_num (--num, --ref-num) must be at least 2, got {num} and {ref_num} "
                           "(a covariance needs two samples)")
    if not samplers or not steps:
        raise DdpmkitError("name at least one sampler and one step count")
    if ref_split not in SPLITS:
        raise DdpmkitError(f"unknown reference split {ref_split!r}; use {' or '.join(SPLITS)}")
    folder, checkpoint = RunFolder.locate(run)
    info = folder.info(checkpoint)
    data_name = info.trained_on
    run_sampler, _, run_spacing = info.sampler  # the steps are always named here; the spacing may not be

    def plan(spec: str, n: int, w: float | None) -> tuple[str, SampleRequest]:
        """"dpm++2m" or "dpm++2m:karras" (a sampler with its own timestep spacing) at n steps and guidance w: the row's
        label (which timesteps, where the run's preset chose them) and the checked request."""
        name, _, spacing = spec.partition(":")
        request = SampleRequest(num=num, sampler=name, steps=n, spacing=spacing or None, eta=eta,
                                clip_denoised=clip_denoised, guidance=w, seed=seed, batch_size=batch_size)
        preset_spacing = run_spacing if not spacing and name == run_sampler else None
        return (f"{name}:{preset_spacing}" if preset_spacing else spec), request.resolve(info)

    plans = [plan(spec, n, w) for spec in samplers for n in steps for w in (guidance or [None])]
    metrics = tuple(metrics) if metrics is not None else default_metrics(data_name)
    check_metrics(metrics)
    check_classifier_metrics(metrics, data_name)
    report_dir = check_writable(Path(out) if out is not None else folder.eval_dir, "dir", "--out")

    from ..pipeline import Pipeline
    from .classifier import MnistClassifier
    from .inception import InceptionFeatures
    from .reference import reference_stats_with_fallback
    from .sweep import run_sweep, write_sweep_report

    pipe = Pipeline.from_run(checkpoint, device=device, precision=precision)
    image_size = pipe.model.config.image_size

    def reference(extractor):
        return reference_stats_with_fallback(data_name, extractor, split=ref_split, num=ref_num,
                                             image_size=image_size, progress=progress)

    references, inception, classifier = {}, None, None
    if set(INCEPTION_METRICS) & set(metrics):
        inception = InceptionFeatures(inception_path)
        references["inception"] = reference(inception)
    if set(CLASSIFIER_METRICS) & set(metrics):
        classifier = MnistClassifier()
        if "cfid" in metrics:
            references["classifier"] = reference(classifier)

    requests, sweep = {}, []
    for label, request in plans:
        named = request.labels is not None and (guidance is not None or info.guidance != 1.0)
        guided = {"guidance": request.guidance} if named else {}  # the run's recommended guidance, named in each row
        requests[label, request.steps, guided.get("guidance")] = request
        sweep.append({"sampler": label, "steps": request.steps, **guided})

    def generate(count: int, sampler: str, n_steps: int, seed: int, guidance: float | None = None) -> dict:
        request = dataclasses.replace(requests[sampler, n_steps, guidance], seed=seed)
        assert count == request.num, "run_sweep asks for the request's num images"
        labels = None if request.labels is None else np.asarray(request.labels)
        return {"images": pipe.generate(request, progress=progress), "nfe": request.steps, "labels": labels}

    rows = run_sweep(generate, sweep, num, references,
                     metrics, seed=seed, inception=inception, classifier=classifier, progress=progress)
    clipped = plans[0][1].clip_denoised
    rows = [{**row, "clip_denoised": clipped} for row in rows]  # which way x̂_0 was treated, beside each score
    paths = write_sweep_report(rows, report_dir)
    return EvalResult(rows, paths)
