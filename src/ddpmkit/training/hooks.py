"""What the training loop does besides training, as hooks: metric rows, the progress bar, sample grids, FID,
checkpoints, and at the end the loss plots and summary.json.

A hook sees a :class:`HookContext`, never the Trainer: the run's config and folder, the step, the training state,
the metrics logger, and two actions (sample from the EMA, save a checkpoint). It may implement any of

* ``__call__(ctx)``: when due: every ``every`` steps and at the last step of the run (with ``at_stop`` also where
  ``fit(until=…)`` stops early). When ``train.max_minutes`` ends a command every periodic hook runs once more
  (``final``): the grid, metrics and checkpoint of where it stopped, as at the end of a run; ``--resume`` continues
  from there. A hook with ``every=None`` is never due.
* ``start(ctx)`` when ``fit`` begins; ``after_step(ctx, result)`` after every optimizer step with its
  :class:`StepResult` (what a hook accumulates between its rows: no host sync here);
  ``saved(ctx, checkpoint)`` after a checkpoint was written; ``end(ctx)`` when ``fit`` returns (at the end of the
  run, and after an early stop); ``close()`` always, even after an error (release a resource).

Everything that writes runs on the main process only: :func:`is_main_process` is the one rank guard (hooks with
``main_process_only`` are skipped elsewhere; the builder writes the run folder on the main process only).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..atomic import atomic_write_text
from ..config import RunConfig
from ..diffusion import LossTerms
from ..run import RunFolder
from ..viz import make_grid, save_grid
from .plots import convergence_summary, plot_loss_by_timestep, plot_loss_curve

if TYPE_CHECKING:
    from .metrics import MetricsLogger
    from .state import TrainingState


def is_main_process() -> bool:
    """Rank 0 of a torch.distributed job, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@dataclass
class StepResult:
    """One optimizer step, as the loop hands it to the hooks.

    loss: the step's mean loss (a host float: the step's one sync, for the NaN check).
    grad_norm: the gradient norm before clipping (a device tensor: read it only when reporting).
    terms: each micro-batch's :class:`~ddpmkit.diffusion.LossTerms` (t, per-sample losses, L_t terms).
    t_weights: each micro-batch's importance weights of t (None where t was drawn uniformly).
    """

    loss: float
    grad_norm: Tensor
    terms: list[LossTerms]
    t_weights: list[Tensor | None]


@dataclass
class HookContext:
    """What a hook may read, and the two things it may ask for.

    ``hook_seconds`` is the time spent in clock-pausing hooks since ``fit`` began (kept by the hook runner), so a
    metric row's images/s leaves out sampling and checkpointing.
    """

    config: RunConfig
    run: RunFolder
    state: TrainingState
    logger: MetricsLogger | None  # None off the main process, where no hook that writes runs
    total_steps: int
    progress: bool
    sample_ema: Callable[[int, int], np.ndarray]  # (num, seed) -> uint8 images from the EMA model
    save_checkpoint: Callable[[], Path]            # checkpoints/step_N of the current state
    hook_seconds: float = 0.0

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def model(self) -> torch.nn.Module:
        return self.state.model

    @property
    def ema(self):
        return self.state.ema


class Hook:
    """Runs ``__call__(ctx)`` every ``every`` steps and at the last step of the run; see the module docstring for
    the other moments a hook can act at."""

    at_stop = False          # also run when fit(until=…) stops before the end
    main_process_only = True
    pauses_clock = True      # its time does not count against the images/s of the next metric row

    def __init__(self, every: int | None = None):
        self.every = every

    def due(self, step: int, total_steps: int, stop: int) -> bool:
        if self.every is None:
            return False
        return step % self.every == 0 or step == total_steps or (self.at_stop and step == stop)

    def start(self, ctx: HookContext) -> None:
        pass

    def after_step(self, ctx: HookContext, result: StepResult) -> None:
        pass

    def __call__(self, ctx: HookContext) -> None:
        pass

    def saved(self, ctx: HookContext, checkpoint: Path) -> None:
        pass

    def end(self, ctx: HookContext) -> None:
        pass

    def close(self) -> None:
        pass


class HookRunner:
    """Calls the hooks in order at each moment of ``fit``; hooks that write run on the main process only."""

    def __init__(self, hooks: list[Hook]):
        main = is_main_process()
        self.hooks = [hook for hook in hooks if main or not hook.main_process_only]

    def start(self, ctx: HookContext) -> None:
        ctx.hook_seconds = 0.0
        for hook in self.hooks:
            hook.start(ctx)

    def after_step(self, ctx: HookContext, result: StepResult, stop: int, final: bool = False) -> None:
        """Every hook sees the step's result; then those due at this step run (all periodic ones when ``final``)."""
        for hook in self.hooks:
            hook.after_step(ctx, result)
        for hook in self.hooks:
            if hook.every is None or not (final or hook.due(ctx.step, ctx.total_steps, stop)):
                continue
            began = time.perf_counter()
            hook(ctx)
            if hook.pauses_clock:
                ctx.hook_seconds += time.perf_counter() - began

    def saved(self, ctx: HookContext, checkpoint: Path) -> None:
        for hook in self.hooks:
            hook.saved(ctx, checkpoint)

    def end(self, ctx: HookContext) -> None:
        for hook in self.hooks:
            hook.end(ctx)

    def close(self) -> None:
        for hook in self.hooks:
            hook.close()


# ----- per-step accumulation of what a metric row reports -------------------------------------------------------

class TimestepLosses:
    """Sum and count of the per-sample loss in ``buckets`` equal ranges of t, accumulated on the device."""

    def __init__(self, num_steps: int, device: torch.device, buckets: int = 10):
        self.num_steps, self.buckets = num_steps, buckets
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = torch.zeros(2, buckets, dtype=dtype, device=device)

    def add(self, t: Tensor, per_sample: Tensor) -> None:
        bucket = (t * self.buckets // self.num_steps).long().to(self.sums.device)
        self.sums[0].index_add_(0, bucket, per_sample.to(self.sums))
        self.sums[1].index_add_(0, bucket, torch.ones_like(bucket, dtype=self.sums.dtype))

    def means(self, reset: bool = True) -> dict[str, float]:
        """{"loss_t0": …, "loss_t100": …} for the buckets that saw a sample; then starts over (with ``reset``)."""
        sums, counts = self.sums.double().cpu().tolist()  # a copy: the buckets are zeroed below
        width = self.num_steps // self.buckets
        if reset:
            self.sums.zero_()
        return {f"loss_t{i * width}": sums[i] / counts[i] for i in range(self.buckets) if counts[i] > 0}

    def state(self) -> list[list[float]]:
        return self.sums.cpu().tolist()  # exact: float64 (or MPS's float32) values as Python floats

    def load(self, sums: list[list[float]]) -> None:
        self.sums.copy_(torch.tensor(sums, dtype=self.sums.dtype))


class LossParts:
    """The hybrid loss's two parts (a learned variance), summed on the device: ``loss = loss_simple + λ·loss_vlb``.

    Per sample the loss is (L_simple + λ·T·L_t)·w with w the importance weight of t (1 when t is uniform); so
    ``loss_vlb`` is the mean of T·L_t·w, an estimate of L_vlb = Σ_t L_t in bits/dim (without the prior term L_T), and
    ``loss_simple`` the mean of what remains (as improved-diffusion logs ``mse`` and ``vb`` beside ``loss``).
    """

    def __init__(self, num_steps: int, vlb_weight: float, device: torch.device):
        self.num_steps, self.vlb_weight = num_steps, vlb_weight
        self.sums = torch.zeros(2, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
        self.count = 0

    def add(self, terms: LossTerms, t_weights: Tensor | None) -> None:
        vlb = terms.vlb * self.num_steps
        if t_weights is not None:
            vlb = vlb * t_weights
        simple = terms.per_sample - self.vlb_weight * vlb
        self.sums += torch.stack((simple.sum(), vlb.sum())).to(self.sums)
        self.count += vlb.shape[0]

    def means(self, reset: bool = True) -> dict[str, float]:
        """{"loss_simple": …, "loss_vlb": …} since the last reset ({} when no term was added); then starts over
        (with ``reset``)."""
        if not self.count:
            return {}
        simple, vlb = self.sums.double().cpu().tolist()
        means = {"loss_simple": simple / self.count, "loss_vlb": vlb / self.count}
        if reset:
            self.sums.zero_()
            self.count = 0
        return means

    def state(self) -> dict[str, Any]:
        return {"sums": self.sums.cpu().tolist(), "count": self.count}

    def load(self, state: dict[str, Any]) -> None:
        self.sums.copy_(torch.tensor(state["sums"], dtype=self.sums.dtype))
        self.count = int(state["count"])


# ----- the hooks -------------------------------------------------------------------------------------------------

class LogMetrics(Hook):
    """A metrics row: mean loss (with a learned variance also its parts ``loss_simple`` and ``loss_vlb``), lr,
    gradient norm, images/s, epoch, loss per timestep bucket. What it reports it accumulates after every step.

    A row at a multiple of ``every`` (or the last step) closes its window of steps. A row where a run stops early
    (``--max-minutes``, ``fit(until=…)``) reports the window so far and leaves it open; the open window rides in the
    checkpoint (the builder registers this hook's :meth:`state_dict` with the training state), so after a resume
    the next row covers the same steps, and reports the same loss, as an uninterrupted run's."""

    at_stop = True
    pauses_clock = False

    def __init__(self, every: int | None = None):
        super().__init__(every)
        self._owner: Any = None                     # the training state whose steps the window holds
        self._restored: dict[str, Any] | None = None  # a checkpoint's open window, applied at start

    def start(self, ctx: HookContext) -> None:
        d, device = ctx.config.diffusion, ctx.state.device
        self.images_per_step = ctx.config.train.batch_size * ctx.config.train.grad_accum
        if self._owner is not ctx.state or self._restored is not None:  # a new run, or a resumed one
            self.by_timestep = TimestepLosses(d.num_steps, device)
            self.parts = LossParts(d.num_steps, d.vlb_weight, device)
            self.loss, self.steps = 0.0, 0
            self.grad_norm: Tensor | None = None
            if self._restored:
                self.loss, self.steps = float(self._restored["loss"]), int(self._restored["steps"])
                self.by_timestep.load(self._restored["by_timestep"])
                self.parts.load(self._restored["parts"])
            self._owner, self._restored = ctx.state, None
        self._restart_clock(ctx)

    def _restart_clock(self, ctx: HookContext) -> None:
        self.timed_steps, self.began, self.paused = 0, time.perf_counter(), ctx.hook_seconds

    def state_dict(self) -> dict[str, Any]:
        """The open window (JSON values only): loss sum and steps, the timestep buckets, the loss parts."""
        if self._owner is None:
            return dict(self._restored or {})
        return {"loss": self.loss, "steps": self.steps, "by_timestep": self.by_timestep.state(),
                "parts": self.parts.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = dict(state) if state else None  # a checkpoint from before windows were saved: none

    def after_step(self, ctx: HookContext, result: StepResult) -> None:
        self.loss += result.loss
        self.steps += 1
        self.timed_steps += 1
        self.grad_norm = result.grad_norm
        for terms, t_weights in zip(result.terms, result.t_weights):
            self.by_timestep.add(terms.t, terms.per_sample)
            if terms.vlb is not None:
                self.parts.add(terms, t_weights)

    def __call__(self, ctx: HookContext) -> None:
        seconds = time.perf_counter() - self.began - (ctx.hook_seconds - self.paused)
        rate = self.timed_steps * self.images_per_step / max(seconds, 1e-9)
        grad_norm = self.grad_norm.item() if self.grad_norm is not None else 0.0
        closes = ctx.step % self.every == 0 or ctx.step == ctx.total_steps  # else an early stop: the window stays
        row = {"loss": self.loss / max(self.steps, 1), **self.parts.means(reset=closes),
               "lr": ctx.state.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm, "images_per_s": rate,
               "epoch": ctx.state.loader.epoch, **self.by_timestep.means(reset=closes)}
        ctx.logger.log(ctx.step, **row)
        if closes:
            self.loss, self.steps = 0.0, 0
        self._restart_clock(ctx)


class ProgressBar(Hook):
    """The tqdm bar of the run (hidden without ``progress``): a tick every step, the newest metric row's loss,
    images/s and lr beside it, and once per ``fit`` the time the run will take (:func:`eta_message`)."""

    at_stop = True
    pauses_clock = False

    def __init__(self, every: int):
        super().__init__(every)
        self.bar: Any = None

    def start(self, ctx: HookContext) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=ctx.total_steps, initial=ctx.step, desc="train", unit="step", disable=not ctx.progress,
                        dynamic_ncols=True)
        self.first_step, self.eta_reported = ctx.step, False

    def after_step(self, ctx: HookContext, result: StepResult) -> None:
        self.bar.update(1)

    def __call__(self, ctx: HookContext) -> None:
        row = next((r for r in reversed(ctx.logger.rows) if {"loss", "images_per_s", "lr"} <= r.keys()), None)
        if row is None or row["step"] != ctx.step:
            return
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}", lr=f"{row['lr']:.1e}")
        if not self.eta_reported:  # the speed of the first row of this fit, as a finishing time
            tc = ctx.config.train
            self.bar.write(eta_message(ctx.step - self.first_step, row["images_per_s"], ctx.total_steps - ctx.step,
                                       tc.batch_size * tc.grad_accum))
            self.eta_reported = True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def eta_message(steps_measured: int, images_per_s: float, steps_left: int, images_per_step: int) -> str:
    """One line after the first metric row: the measured speed and the training time it implies on this machine."""
    seconds = steps_left * images_per_step / max(images_per_s, 1e-9)
    finish = time.strftime("%H:%M", time.localtime(time.time() + seconds))
    return (f"speed over the first {steps_measured} steps: {images_per_s:.0f} images/s, "
            f"{images_per_step / max(images_per_s, 1e-9):.2f} s/step -> about {seconds / 60:.0f} min of training "
            f"left for {steps_left:,} steps (done near {finish}, plus sample grids and checkpoints)")


class SampleGrid(Hook):
    """A grid from the EMA model with a fixed seed, so grids are comparable across training."""

    def __call__(self, ctx: HookContext) -> None:
        tc = ctx.config.train
        images = ctx.sample_ema(tc.num_samples, tc.sample_seed)
        path = ctx.run.sample_grid(ctx.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(images, path)
        save_grid(images, ctx.run.latest_grid)
        ctx.logger.image("samples", make_grid(images), ctx.step)


class MeasureFID(Hook):
    """FID of ``fid_num`` EMA samples (the grid's sampler) against cached reference statistics of the data."""

    def __init__(self, every: int, config: RunConfig, progress: bool):
        super().__init__(every)
        self.config, self.progress = config, progress
        self.extractor: Any = None
        self.reference: Any = None

    def _load(self) -> None:
        from ..eval.classifier import MnistClassifier
        from ..eval.inception import InceptionFeatures
        from ..eval.reference import reference_stats_with_fallback

        tc = self.config.train
        with torch.random.fork_rng(devices=[]):  # building a network must not move the training RNG
            self.extractor = MnistClassifier() if tc.fid_features == "classifier" else InceptionFeatures()
        self.reference = reference_stats_with_fallback(
            self.config.data.name, self.extractor, split="test", num=tc.fid_ref_num,
            image_size=self.config.data.image_size, progress=self.progress)

    def __call__(self, ctx: HookContext) -> None:
        tc = self.config.train
        if self.extractor is None:
            self._load()
        images = ctx.sample_ema(tc.fid_num, tc.sample_seed + 1)
        name = "fid" if tc.fid_features == "inception" else "fid_classifier"
        features = self.extractor(images, progress=False)
        ctx.logger.log(ctx.step, **{name: self.reference.fid(features), f"{name}_num": tc.fid_num,
                                    f"{name}_ref_num": self.reference.n})


class SaveCheckpoint(Hook):
    at_stop = True
    main_process_only = False  # a distributed run's processes all take part (their RNG states); rank 0 writes

    def __call__(self, ctx: HookContext) -> None:
        ctx.save_checkpoint()


class PlotLossCurve(Hook):
    """loss_curve.png when ``fit`` returns: the logged loss against step, with the learning rate."""

    def end(self, ctx: HookContext) -> None:
        plot_loss_curve(ctx.logger.rows, ctx.run.loss_curve)


class PlotLossByTimestep(Hook):
    """loss_by_timestep.png when ``fit`` returns: which noise levels are hard, as training went on."""

    def end(self, ctx: HookContext) -> None:
        plot_loss_by_timestep(ctx.logger.rows, ctx.run.loss_by_timestep)


class WriteSummary(Hook):
    """summary.json when ``fit`` returns: :func:`~ddpmkit.training.plots.convergence_summary` of the logged rows."""

    def end(self, ctx: HookContext) -> None:
        atomic_write_text(ctx.run.summary_file, json.dumps(convergence_summary(ctx.logger.rows), indent=1))


def default_hooks(config: RunConfig, steps_per_epoch: int, progress: bool) -> list[Hook]:
    """Metrics, sample grids, FID (if asked for) and checkpoints, in that order, at the config's intervals."""
    tc = config.train
    sample_every = tc.sample_every or max(1, round((tc.sample_every_epochs or 1.0) * steps_per_epoch))
    hooks: list[Hook] = [LogMetrics(tc.log_every), SampleGrid(sample_every)]
    if tc.fid_every:
        hooks.append(MeasureFID(tc.fid_every, config, progress))
    hooks.append(SaveCheckpoint(tc.checkpoint_every or sample_every))
    return hooks


def builtin_hooks(config: RunConfig) -> list[Hook]:
    """The hooks every run has, whatever replaces the default ones: the progress bar, and at the end the loss plots
    and summary.json."""
    return [ProgressBar(config.train.log_every), PlotLossCurve(), PlotLossByTimestep(), WriteSummary()]


__all__ = ["Hook", "HookContext", "HookRunner", "LogMetrics", "MeasureFID", "PlotLossByTimestep", "PlotLossCurve",
           "ProgressBar", "SampleGrid", "SaveCheckpoint", "StepResult", "WriteSummary", "builtin_hooks",
           "default_hooks", "eta_message", "is_main_process"]
