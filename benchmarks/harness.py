"""One harness for recipe comparisons: train candidates on one budget, snapshot their EMA weights, score them.

Used by ``benchmarks/time_to_quality.py`` (FID against training minutes, ours against diffusers' recipe) and by
the experiments ``experiments/recipe_search.py`` (which recipe the default job should use) and
``experiments/recipe_table.py`` (schedules, targets, weightings), which put this folder on their path.

A candidate is a preset plus ``--set``-style overrides. :func:`train` runs the ordinary :class:`Trainer` with one
hook instead of the default ones: it updates extra EMAs of the same weights (so one run answers "which EMA
decay?") and, at chosen steps, saves every EMA's weights as safetensors with the training seconds so far. The
seconds exclude the hook's own work, so they are the seconds the default job would spend. :func:`score` samples
a snapshot and scores it with the same references the ``ddpmkit eval`` command uses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ddpmkit.config import RunConfig
from ddpmkit.data import load_dataset
from ddpmkit.eval import InceptionFeatures, MnistClassifier, class_histogram, reference_stats
from ddpmkit.models import UNet
from ddpmkit.presets import load_preset
from ddpmkit.sampling import sample
from ddpmkit.training import Trainer, build_diffusion
from ddpmkit.training.ema import EMA
from ddpmkit.training.hooks import Hook
from ddpmkit.viz import to_uint8

# How every comparison trains: no grids, checkpoints or TensorBoard (the hook below is the only one), fp32 (a
# candidate's own overrides come after these, so one that names its precision gets it).
QUIET = ["train.tensorboard=false", "train.precision=fp32"]


@dataclass
class Candidate:
    """A recipe: a preset, ``section.key=value`` overrides, model-size overrides and an optional EMA decay rule."""

    name: str
    overrides: list[str] = field(default_factory=list)
    model_overrides: dict = field(default_factory=dict)
    preset: str = "mnist"
    ema_decay_at: Callable[[int], float] | None = None  # replaces the main EMA's warm-up rule

    def config(self, steps: int | None = None, device: str = "cpu") -> RunConfig:
        config = load_preset(self.preset)
        config.override(QUIET + self.overrides + [f"train.device={device}"]
                        + ([f"train.steps={steps}", "train.epochs=null"] if steps else []))
        config.model.overrides = {**config.model.overrides, **self.model_overrides}
        return config


def diffusers_ema_decay(max_decay: float = 0.9999, inv_gamma: float = 1.0, power: float = 0.75):
    """diffusers' EMAModel warm-up, as train_unconditional uses it: d_t = min(max, 1 − (1 + t/γ)^−p), p = 3/4."""
    return lambda t: min(max_decay, max(0.0, 1 - (1 + t / inv_gamma) ** -power))


class Snapshots(Hook):
    """Every step: update the extra EMAs. At ``at_steps``: save each EMA's weights and the training seconds."""

    pauses_clock = True

    def __init__(self, out_dir: Path, at_steps: list[int], extra_emas: dict[str, tuple[float, bool]]):
        super().__init__(every=1)
        self.out_dir, self.at_steps, self.extra_spec = Path(out_dir), set(at_steps), extra_emas
        self.extras: dict[str, EMA] = {}
        self.clock_start = time.perf_counter()  # not ``start``: that name is a Hook method
        self.hook_seconds = 0.0
        self.rows: list[dict] = []

    def __call__(self, ctx) -> None:
        """``ctx``: what the trainer hands its hooks (step, model, ema, config)."""
        entered = time.perf_counter()
        if not self.extras:  # built after the first step, then updated with it, as the main EMA was
            self.extras = {k: EMA(ctx.model, d, w) for k, (d, w) in self.extra_spec.items()}
        for ema in self.extras.values():
            ema.update(ctx.model)
        if ctx.step in self.at_steps:
            seconds = entered - self.clock_start - self.hook_seconds
            folder = self.out_dir / f"step{ctx.step:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            emas = {"ema": ctx.ema, **self.extras}
            for label, ema in emas.items():
                weights = {k: v.contiguous() for k, v in ema.model.state_dict().items()}
                save_file(weights, folder / f"{label}.safetensors")
            self.rows.append({"step": ctx.step, "images": ctx.step * ctx.config.train.batch_size,
                              "train_seconds": seconds, "weights": sorted(emas)})
            (self.out_dir / "snapshots.json").write_text(json.dumps(self.rows, indent=1))
        self.hook_seconds += time.perf_counter() - entered


def train(candidate: Candidate, out_dir: Path, steps: int | None = None, snapshot_fractions=(1.0,),
          extra_emas: dict[str, tuple[float, bool]] | None = None, data=None, device: str = "cpu") -> list[dict]:
    """Train one candidate; returns its snapshot rows (step, images, train_seconds, weights)."""
    config = candidate.config(steps, device)
    out_dir = Path(out_dir)
    trainer = Trainer(config, out_dir / "run", data=data, progress=True, hooks=[])
    if candidate.ema_decay_at is not None:
        trainer.ema.decay_at = candidate.ema_decay_at
    total = trainer.total_steps
    at = sorted({max(1, round(f * total)) for f in snapshot_fractions})
    hook = Snapshots(out_dir, at, extra_emas or {})
    trainer.hooks = [hook]
    hook.clock_start = time.perf_counter()
    trainer.fit()
    trainer.save_checkpoint()  # a run folder like the CLI's: ddpmkit sample/eval (and --nll) work on it
    (out_dir / "candidate.json").write_text(json.dumps({"name": candidate.name, "preset": candidate.preset,
                                                        "overrides": candidate.overrides,
                                                        "model_overrides": candidate.model_overrides,
                                                        "config": config.to_dict()}, indent=1))
    return hook.rows


def finished_training(candidate: Candidate, work: Path, steps: int) -> list[dict] | None:
    """The snapshot rows of a training that ``train`` finished in ``work`` with this configuration, else None.

    ``candidate.json`` is written after the last step, so its presence marks a finished training.
    """
    done = work / "candidate.json"
    if not done.exists():
        return None
    if json.loads(done.read_text())["config"] != json.loads(json.dumps(candidate.config(steps).to_dict())):
        return None
    return json.loads((work / "snapshots.json").read_text())


class Judge:
    """Samples a snapshot and scores it: classifier FID (fast proxy), Inception FID (final numbers), confidence."""

    def __init__(self, spec: str = "mnist", ref_num: int = 2000, inception: bool = False):
        self.classifier = MnistClassifier()
        self.cref = reference_stats(spec, self.classifier, split="test", num=ref_num, progress=False)
        self.inception = InceptionFeatures() if inception else None
        self.iref = (reference_stats(spec, self.inception, split="test", num=ref_num) if inception else None)

    def __call__(self, images_uint8: np.ndarray) -> dict:
        feats, logits = self.classifier.outputs(images_uint8, progress=False)
        probs = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
        hist = class_histogram(probs.argmax(1))
        row = {"num": len(images_uint8), "cfid": self.cref.fid(feats), "cfid_ref_n": self.cref.n,
               "confident": float((probs.max(1) > 0.9).mean()), "smallest_class_share": hist["min_share"],
               "largest_class_share": float(np.bincount(probs.argmax(1), minlength=10).max() / len(probs))}
        if self.inception is not None:
            row.update(fid=self.iref.fid(self.inception(images_uint8, progress=True)), fid_ref_n=self.iref.n)
        return row


def load_snapshot(out_dir: Path, step: int, label: str = "ema") -> tuple[UNet, object]:
    """The UNet of a snapshot (with its weights) and its diffusion, rebuilt from the run's saved config."""
    out_dir = Path(out_dir)
    config = RunConfig.load(out_dir / "run" / "config.yaml")
    data = load_dataset(config.data.name, "train", config.data.image_size, progress=False)
    from ddpmkit.training import build_unet_config
    model = UNet(build_unet_config(config, data))
    model.load_state_dict(load_file(out_dir / f"step{step:06d}" / f"{label}.safetensors"))
    return model.eval(), build_diffusion(config)


def draw(model: UNet, diffusion, num: int, sampler: str, steps: int, seed: int = 0, batch: int = 500,
         spacing: str | None = None) -> np.ndarray:
    """``num`` samples as uint8 (N, H, W, C), drawn in batches from one seeded generator.

    A class-conditional model gets class-balanced labels (sample i is class i mod K), as ``ddpmkit eval`` gives it;
    an unconditional one gets none."""
    generator = torch.Generator().manual_seed(seed)
    cfg = model.config
    labels = torch.arange(num) % cfg.num_classes if cfg.num_classes else None
    chunks = []
    for start in range(0, num, batch):
        n = min(batch, num - start)
        kwargs = {} if labels is None else {"labels": labels[start:start + n]}
        x = sample(model, diffusion, (n, cfg.in_channels, cfg.image_size, cfg.image_size), sampler=sampler,
                   steps=steps, spacing=spacing, model_kwargs=kwargs, generator=generator)
        chunks.append(to_uint8(x))
    return np.concatenate(chunks)
