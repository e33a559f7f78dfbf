"""What the training loop does besides training, as hooks: metric rows, sample grids, FID, checkpoints.

A hook runs after an optimizer step when it is due: every ``every`` steps, and at the end of the run. With
``at_stop`` it also runs when the loop stops early (``fit(until=…)``), so a run cut short still logs and saves.
When ``train.max_minutes`` ends a command, every hook runs once more (``final``): the grid, metrics and checkpoint
of where it stopped, as at the end of a run; ``--resume`` continues from there.
Hooks that write files or measure run on the main process only: :func:`is_main_process` is the one rank guard.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ..config import RunConfig
from ..viz import make_grid, save_grid

if TYPE_CHECKING:
    from .trainer import Trainer


def is_main_process() -> bool:
    """Rank 0 of a torch.distributed job, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class Hook:
    """Runs ``__call__(trainer)`` every ``every`` steps and at the last step of the run."""

    at_stop = False          # also run when fit(until=…) stops before the end
    main_process_only = True
    pauses_clock = True      # its time does not count against the images/s of the next metric row

    def __init__(self, every: int):
        self.every = every

    def due(self, step: int, total_steps: int, stop: int) -> bool:
        return step % self.every == 0 or step == total_steps or (self.at_stop and step == stop)

    def __call__(self, trainer: Trainer) -> None:
        raise NotImplementedError


class Throughput:
    """Mean loss and images/s since the last metric row."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.loss, self.steps, self.images, self.start = 0.0, 0, 0, time.perf_counter()

    def add(self, loss: float, images: int) -> None:
        self.loss, self.steps, self.images = self.loss + loss, self.steps + 1, self.images + images

    def pause(self, seconds: float) -> None:
        self.start += seconds


class TimestepLosses:
    """Sum and count of the per-sample loss in ``buckets`` equal ranges of t, accumulated on the device."""

    def __init__(self, num_steps: int, device: torch.device, buckets: int = 10):
        self.num_steps, self.buckets = num_steps, buckets
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = torch.zeros(2, buckets, dtype=dtype, device=device)

    def add(self, t: torch.Tensor, per_sample: torch.Tensor) -> None:
        bucket = (t * self.buckets // self.num_steps).long().to(self.sums.device)
        self.sums[0].index_add_(0, bucket, per_sample.to(self.sums))
        self.sums[1].index_add_(0, bucket, torch.ones_like(bucket, dtype=self.sums.dtype))

    def means(self) -> dict[str, float]:
        """{"loss_t0": …, "loss_t100": …} for the buckets that saw a sample; then starts over."""
        sums, counts = self.sums.double().cpu().tolist()  # a copy: the buckets are zeroed below
        width = self.num_steps // self.buckets
        self.sums.zero_()
        return {f"loss_t{i * width}": sums[i] / counts[i] for i in range(self.buckets) if counts[i] > 0}


class LogMetrics(Hook):
    """A metrics row: mean loss, lr, gradient norm, images/s, epoch, loss per timestep bucket."""

    at_stop = True
    pauses_clock = False

    def __call__(self, trainer: Trainer) -> None:
        meter = trainer.throughput
        rate = meter.images / max(time.perf_counter() - meter.start, 1e-9)
        row = {"loss": meter.loss / max(meter.steps, 1), "lr": trainer.optimizer.param_groups[0]["lr"],
               "grad_norm": trainer.last_grad_norm.item(), "images_per_s": rate, "epoch": trainer.loader.epoch,
               **trainer.timestep_losses.means()}
        trainer.logger.log(trainer.step, **row)
        if trainer.bar is not None:
            trainer.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}", lr=f"{row['lr']:.1e}")
            if not trainer.eta_reported:
                trainer.bar.write(eta_message(meter.steps, rate, trainer.total_steps - trainer.step,
                                              trainer.config.train.batch_size * trainer.config.train.grad_accum))
                trainer.eta_reported = True
        meter.restart()


def eta_message(steps_measured: int, images_per_s: float, steps_left: int, images_per_step: int) -> str:
    """One line after the first metric row: the measured speed and the training time it implies on this machine."""
    seconds = steps_left * images_per_step / max(images_per_s, 1e-9)
    finish = time.strftime("%H:%M", time.localtime(time.time() + seconds))
    return (f"speed over the first {steps_measured} steps: {images_per_s:.0f} images/s, "
            f"{images_per_step / max(images_per_s, 1e-9):.2f} s/step -> about {seconds / 60:.0f} min of training "
            f"left for {steps_left:,} steps (done near {finish}, plus sample grids and checkpoints)")


class SampleGrid(Hook):
    """A grid from the EMA model with a fixed seed, so grids are comparable across training."""

    def __call__(self, trainer: Trainer) -> None:
        tc = trainer.config.train
        images = trainer.sample_ema(tc.num_samples, seed=tc.sample_seed)
        path = trainer.run.sample_grid(trainer.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(images, path)
        save_grid(images, trainer.run.latest_grid)
        trainer.logger.image("samples", make_grid(images), trainer.step)


class MeasureFID(Hook):
    """FID of ``fid_num`` EMA samples (the grid's sampler) against cached reference statistics of the data."""

    def __init__(self, every: int, config: RunConfig, progress: bool):
        super().__init__(every)
        self.config, self.progress = config, progress
        self.extractor: Any = None
        self.reference: Any = None

    def _load(self) -> None:
        from ..eval import MnistClassifier
        from ..eval.inception import InceptionFeatures
        from ..eval.reference import reference_stats_with_fallback

        tc = self.config.train
        with torch.random.fork_rng(devices=[]):  # building a network must not move the training RNG
            self.extractor = MnistClassifier() if tc.fid_features == "classifier" else InceptionFeatures()
        self.reference = reference_stats_with_fallback(
            self.config.data.name, self.extractor, split="test", num=tc.fid_ref_num,
            image_size=self.config.data.image_size, progress=self.progress)

    def __call__(self, trainer: Trainer) -> None:
        tc = self.config.train
        if self.extractor is None:
            self._load()
        images = trainer.sample_ema(tc.fid_num, seed=tc.sample_seed + 1)
        name = "fid" if tc.fid_features == "inception" else "fid_classifier"
        features = self.extractor(images, progress=False)
        trainer.logger.log(trainer.step, **{name: self.reference.fid(features), f"{name}_num": tc.fid_num,
                                            f"{name}_ref_num": self.reference.n})


class SaveCheckpoint(Hook):
    at_stop = True

    def __call__(self, trainer: Trainer) -> None:
        trainer.save_checkpoint()


def default_hooks(config: RunConfig, steps_per_epoch: int, progress: bool) -> list[Hook]:
    """Metrics, sample grids, FID (if asked for) and checkpoints, in that order, at the config's intervals."""
    tc = config.train
    sample_every = tc.sample_every or max(1, round((tc.sample_every_epochs or 1.0) * steps_per_epoch))
    hooks: list[Hook] = [LogMetrics(tc.log_every), SampleGrid(sample_every)]
    if tc.fid_every:
        hooks.append(MeasureFID(tc.fid_every, config, progress))
    hooks.append(SaveCheckpoint(tc.checkpoint_every or sample_every))
    return hooks


def run_hooks(hooks: list[Hook], trainer: Trainer, stop: int, final: bool = False) -> None:
    """Run the hooks due at this step, or all of them when ``final`` (the main process only, where a hook asks)."""
    for hook in hooks:
        if not (final or hook.due(trainer.step, trainer.total_steps, stop)):
            continue
        if hook.main_process_only and not is_main_process():
            continue
        start = time.perf_counter()
        hook(trainer)
        if hook.pauses_clock:
            trainer.throughput.pause(time.perf_counter() - start)


__all__ = ["Hook", "LogMetrics", "MeasureFID", "SampleGrid", "SaveCheckpoint", "default_hooks", "is_main_process",
           "run_hooks"]
