"""``evaluate_run``: the steps-versus-quality table of a trained run (what ``ddpmkit eval`` prints).

For each sampler x step count it generates ``num`` images from the run's EMA weights (one seed for all
settings, so the settings differ only in the sampler), times the generation, and scores the images
against cached reference statistics of the data set the run was trained on (see ``sweep.run_sweep``).
Every argument is checked before any weights or reference statistics are loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DdpmkitError
from .sweep import ALL_METRICS, CLASSIFIER_METRICS, INCEPTION_METRICS, default_metrics, sweep_markdown


@dataclass
class EvalResult:
    """The rows of the sweep (one dict per setting) and the report files written (json, markdown, plot)."""

    rows: list[dict]
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def markdown(self) -> str:
        return sweep_markdown(self.rows)


def _num_train_steps(state: dict, checkpoint: Path) -> int:
    """T of the diffusion the checkpoint was trained with, from its state.json (no weights are read)."""
    from ..diffusion import Diffusion

    if "diffusion" not in state:
        raise DdpmkitError(f"{checkpoint}/state.json lacks 'diffusion'; it is not a complete ddpmkit checkpoint")
    return Diffusion.from_dict(state["diffusion"]).num_steps


def _trained_on(state: dict) -> str:
    """The data set a checkpoint was trained on (its config, else its data record)."""
    name = state.get("config", {}).get("data", {}).get("name") or state.get("data", {}).get("name")
    if not name:
        raise DdpmkitError("the checkpoint does not say which data set it was trained on (no data.name in "
                           "state.json); cannot choose reference statistics")
    return name


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
    from ..checkpoint import read_state
    from ..data import SPLITS
    from ..pipeline import run_guidance, run_sampler
    from ..run import RunFolder
    from ..sampling import check_sampler_args

    if num < 2 or ref_num < 2:
        raise DdpmkitError(f"num and ref_num (--num, --ref-num) must be at least 2, got {num} and {ref_num} "
                           "(a covariance needs two samples)")
    if not samplers or not steps:
        raise DdpmkitError("name at least one sampler and one step count")
    if ref_split not in SPLITS:
        raise DdpmkitError(f"unknown reference split {ref_split!r}; use {' or '.join(SPLITS)}")
    guidance = list(guidance) if guidance else [None]
    if any(w is not None and not (math.isfinite(w) and w >= 0) for w in guidance):
        raise DdpmkitError(f"guidance scales must be finite and at least 0 (0: unconditional, 1: conditional), "
                           f"got {', '.join(str(w) for w in guidance)}")
    folder, checkpoint = RunFolder.locate(run)
    state = read_state(checkpoint)
    data_name = _trained_on(state)
    num_train_steps = _num_train_steps(state, checkpoint)
    def check(spec: str, n: int):  # "dpm++2m" or "dpm++2m:karras": a sampler with its own timestep spacing
        name, _, spacing = spec.partition(":")
        run_name, _, run_spacing = run_sampler(state)  # the steps are always named here; the spacing may not be
        preset_spacing = run_spacing if not spacing and name == run_name else None
        settings = check_sampler_args(name, n, eta, num_train_steps, spacing or preset_spacing)
        return (f"{name}:{preset_spacing}" if preset_spacing else spec), settings  # the label says which timesteps

    checked = [check(spec, n) for spec in samplers for n in steps]
    conditional = bool((state.get("unet") or {}).get("num_classes"))
    if guidance != [None] and not conditional:
        raise DdpmkitError(f"{checkpoint} is an unconditional run: --guidance needs a class-conditional model")
    if guidance == [None] and conditional and run_guidance(state) != 1.0:
        guidance = [run_guidance(state)]  # the run's recommended guidance, named in each row
    metrics = tuple(metrics) if metrics else default_metrics(data_name)
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise DdpmkitError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")
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

    num_classes = pipe.num_classes
    labels = np.arange(num) % num_classes if num_classes else None  # class-balanced for conditional models
    settings = {(spec, s.steps): s for spec, s in checked}

    def generate(count: int, sampler: str, n_steps: int, seed: int, guidance: float | None = None) -> dict:
        s = settings[sampler, n_steps]
        images = pipe.generate(count, sampler=s.sampler, steps=s.steps, eta=s.eta, seed=seed, spacing=s.spacing,
                               labels=None if labels is None else labels[:count].tolist(), guidance=guidance,
                               batch_size=batch_size, progress=progress, clip_denoised=clip_denoised)
        return {"images": images, "nfe": s.steps, "labels": None if labels is None else labels[:count]}

    sweep = [{"sampler": spec, "steps": s.steps, **({} if w is None else {"guidance": w})}
             for spec, s in checked for w in guidance]
    rows = run_sweep(generate, sweep, num, references,
                     metrics, seed=seed, inception=inception, classifier=classifier, progress=progress)
    clipped = pipe.diffusion.clip_denoised if clip_denoised is None else clip_denoised
    rows = [{**row, "clip_denoised": clipped} for row in rows]  # which way x̂_0 was treated, beside each score
    paths = write_sweep_report(rows, report_dir)
    return EvalResult(rows, paths)
