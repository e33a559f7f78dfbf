"""The training loop, readable top to bottom: data → noise → loss → AdamW → EMA → grids, metrics, checkpoints."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..atomic import atomic_write_text
from ..config import RunConfig
from ..data import BatchLoader, ImageArray, load_dataset
from ..diffusion import Diffusion
from ..errors import DdpmkitError
from ..models import UNet, UNetConfig
from ..sampling import SAMPLERS, sample
from ..schedule import NoiseSchedule
from ..viz import make_grid, save_grid, to_uint8
from . import checkpoint as ckpt
from .device import autocast, autocast_dtype, resolve_precision, select_device
from .ema import EMA
from .lr import lr_at
from .metrics import MetricsLogger, read_metrics
from .plots import convergence_summary, plot_loss_by_timestep, plot_loss_curve

TIMESTEP_BUCKETS = 10


def build_diffusion(config: RunConfig) -> Diffusion:
    d = config.diffusion
    schedule = NoiseSchedule.from_name(d.schedule, d.num_steps, zero_terminal_snr=d.zero_terminal_snr)
    return Diffusion(schedule, prediction=d.prediction, variance=d.variance, loss_type=d.loss_type,
                     min_snr_gamma=d.min_snr_gamma)


def build_unet_config(config: RunConfig, data: ImageArray) -> UNetConfig:
    """The named UNet size, fitted to the data (size, channels, classes), with the config's overrides."""
    fitted: dict[str, Any] = {"image_size": data.image_size, "in_channels": data.channels}
    if config.model.class_conditional:
        if data.num_classes < 2:
            raise DdpmkitError(f"{data.name} has no class labels; set model.class_conditional=false")
        fitted["num_classes"] = data.num_classes
    unet = UNetConfig.named(config.model.size, **{**fitted, **config.model.overrides})
    if unet.learn_sigma:
        raise DdpmkitError("model.learn_sigma needs the hybrid variational loss, which this release does not train; "
                           "remove model.learn_sigma")
    return unet


def validate_train_config(config: RunConfig) -> None:
    """Reject settings that would only fail later (after an epoch of training) or silently misbehave."""
    tc = config.train
    if (tc.steps is None) == (tc.epochs is None):
        raise DdpmkitError("set exactly one of train.steps and train.epochs (e.g. --steps 2000 or --epochs 3)")
    positive = {"train.batch_size": tc.batch_size, "train.grad_accum": tc.grad_accum, "train.log_every": tc.log_every,
                "train.sample_every": tc.sample_every or 1, "train.checkpoint_every": tc.checkpoint_every or 1,
                "train.keep_checkpoints": tc.keep_checkpoints, "train.num_samples": tc.num_samples,
                "train.sample_steps": tc.sample_steps, "train.fid_every": tc.fid_every or 1,
                "train.steps": tc.steps if tc.steps is not None else 1, "train.fid_num": tc.fid_num - 1,
                "train.epochs": tc.epochs if tc.epochs is not None else 1}
    for key, value in positive.items():
        if value <= 0:
            raise DdpmkitError(f"{key} must be positive (got {value})")
    if tc.lr <= 0 or not 0 <= tc.ema_decay < 1:
        raise DdpmkitError("train.lr must be positive and train.ema_decay in [0, 1)")
    if tc.sample_sampler not in SAMPLERS:
        raise DdpmkitError(f"train.sample_sampler must be one of {', '.join(SAMPLERS)}, not '{tc.sample_sampler}'")
    if tc.sample_steps > config.diffusion.num_steps:
        raise DdpmkitError(f"train.sample_steps ({tc.sample_steps}) exceeds diffusion.num_steps")
    if tc.fid_features not in ("inception", "classifier"):
        raise DdpmkitError(f"train.fid_features must be inception or classifier, not '{tc.fid_features}'")


# What a resumed run must share with its checkpoint for the continuation to be the same training run.
RESUME_KEYS = [("data", "name"), ("data", "image_size"), ("data", "hflip"), ("train", "batch_size"),
               ("train", "grad_accum"), ("train", "seed")]


def check_resumable(state: dict[str, Any], config: RunConfig, unet: UNetConfig, diffusion: Diffusion,
                    checkpoint: Path, run_dir: Path) -> None:
    """One-line errors for a checkpoint that cannot continue as this run."""
    fix = "resume with the run folder's own config.yaml, or start a new run with --out"
    if state.get("unet") != unet.to_dict():
        raise DdpmkitError(f"checkpoint {checkpoint} was trained with another model config; {fix}")
    if state.get("diffusion") != diffusion.to_dict():
        raise DdpmkitError(f"checkpoint {checkpoint} was trained with other diffusion settings; {fix}")
    saved = state.get("config", {})
    for section, key in RESUME_KEYS:
        was, now = saved.get(section, {}).get(key), getattr(getattr(config, section), key)
        if was != now:
            raise DdpmkitError(f"{section}.{key} was {was!r} in checkpoint {checkpoint} but is {now!r} now; {fix}")
    newer = [p for p in ckpt.list_checkpoints(run_dir) if ckpt.checkpoint_step(p) > int(state["step"])]
    if newer:
        raise DdpmkitError(f"{run_dir} holds checkpoints newer than step {state['step']} ({newer[-1].name}); "
                           "resume the newest, or branch into another folder with --out")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float | None
    summary: dict[str, Any]


class Trainer:
    """Owns one run folder. ``Trainer(config, run_dir).fit()`` trains; ``resume=`` continues a checkpoint exactly."""

    def __init__(self, config: RunConfig, run_dir: Path, resume: Path | None = None, progress: bool = True,
                 data: ImageArray | None = None):
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        tc = config.train
        validate_train_config(config)
        self.device = select_device(tc.device)
        self.precision = resolve_precision(tc.precision, self.device)
        self.amp_dtype = autocast_dtype(self.precision, self.device)

        resume_tensors, resume_state = (None, None)
        if resume is not None:
            resume_tensors, resume_state = ckpt.load_checkpoint(resume, required=ckpt.TRAINING_FILES)

        self.data = data if data is not None else load_dataset(config.data.name, "train", config.data.image_size,
                                                               progress=progress)
        self.loader = BatchLoader(self.data, tc.batch_size, shuffle=True, hflip=config.data.hflip, seed=tc.seed)
        self.diffusion = build_diffusion(config)
        self.unet_config = build_unet_config(config, self.data)
        if resume_state is not None:
            check_resumable(resume_state, config, self.unet_config, self.diffusion, Path(resume), self.run_dir)

        torch.manual_seed(tc.seed)
        self.model = UNet(self.unet_config).to(self.device)
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_warmup)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.generator = torch.Generator(gen_device).manual_seed(tc.seed)
        self.step = 0
        self.steps_per_epoch = math.ceil(len(self.loader) / tc.grad_accum)
        self.total_steps = tc.steps if tc.steps is not None else max(1, round(tc.epochs * self.steps_per_epoch))
        if resume_state is not None:
            self._restore(resume_tensors, resume_state)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(self.run_dir / "config.yaml")
        self.logger = MetricsLogger(self.run_dir, tc.tensorboard, resume_step=self.step if resume else None)
        bucket_dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        self._buckets = torch.zeros(2, TIMESTEP_BUCKETS, dtype=bucket_dtype, device=self.device)
        self._fid_extractor, self._fid_reference = None, None

    # ----- setup and state ----------------------------------------------------------------------------------

    def _make_optimizer(self) -> torch.optim.Optimizer:
        tc = self.config.train
        kwargs = dict(lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        try:  # fused AdamW: one kernel for all parameters (~24 -> ~7 ms a step on this CPU, shared/DESIGN.md)
            return torch.optim.AdamW(self.model.parameters(), fused=True, **kwargs)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(self.model.parameters(), **kwargs)

    def _restore(self, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
        self.model.load_state_dict(tensors["model"])
        self.ema.load_state_dict(tensors["ema"], state["ema_updates"])
        self.optimizer.load_state_dict(ckpt.optimizer_from_flat(tensors.get("optimizer", {}), state["optimizer"]))
        self.loader.load_state_dict(state["loader"])
        rng = tensors.get("rng", {})
        torch.set_rng_state(rng["torch_cpu"])
        self.generator.set_state(rng["generator"].to(torch.uint8))
        if self.device.type == "cuda" and "torch_cuda" in rng:
            torch.cuda.set_rng_state(rng["torch_cuda"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def save_checkpoint(self) -> Path:
        opt_tensors, opt_meta = ckpt.optimizer_to_flat(self.optimizer)
        rng = {"torch_cpu": torch.get_rng_state(), "generator": self.generator.get_state().cpu()}
        if self.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state()
        state = {
            "ema_updates": self.ema.num_updates,
            "epoch": self.loader.epoch,
            "loader": self.loader.state_dict(),
            "optimizer": opt_meta,
            "unet": self.unet_config.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "config": self.config.to_dict(),
            "data": {"name": self.data.name, "class_names": list(self.data.class_names)},
            "versions": {"ddpmkit": __version__, "torch": torch.__version__},
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        tensors = {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": opt_tensors,
                   "rng": rng}
        return ckpt.save_checkpoint(self.run_dir, self.step, tensors, state, keep=self.config.train.keep_checkpoints)

    # ----- one optimizer step -------------------------------------------------------------------------------

    def train_step(self, batches) -> tuple[float, torch.Tensor]:
        """Forward and backward ``grad_accum`` micro-batches, clip, AdamW, EMA. Returns (loss, grad-norm tensor)."""
        tc = self.config.train
        lr = lr_at(self.step, tc.lr, tc.warmup_steps, self.total_steps, tc.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for _ in range(tc.grad_accum):
            x0, labels = next(batches)
            x0 = x0.to(self.device, non_blocking=True)
            labels = labels.to(self.device) if self.unet_config.num_classes else None
            with autocast(self.device, self.amp_dtype):
                terms = self.diffusion.training_losses(self.model, x0, labels, generator=self.generator)
            self.scaler.scale(terms.loss / tc.grad_accum).backward()
            total += terms.loss.detach() / tc.grad_accum
            bucket = (terms.t * TIMESTEP_BUCKETS // self.diffusion.num_steps).long().to(self._buckets.device)
            self._buckets[0].index_add_(0, bucket, terms.per_sample.to(self._buckets))
            self._buckets[1].index_add_(0, bucket, torch.ones_like(bucket, dtype=self._buckets.dtype))
        loss = total.item()  # the one host sync of the step, for the NaN check and the progress bar
        if not math.isfinite(loss):
            raise DdpmkitError(self._nan_message())
        self.scaler.unscale_(self.optimizer)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        self.step += 1
        return loss, grad_norm

    def _nan_message(self) -> str:
        last = ckpt.list_checkpoints(self.run_dir)
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
        return (f"loss became NaN/inf at step {self.step + 1}; stopped without saving ({kept}); "
                "lower --lr, keep grad_clip on, or try --precision fp32")

    # ----- the loop -----------------------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> TrainResult:
        """Train to ``total_steps`` (or stop early after step ``until``, as an interruption would)."""
        tc = self.config.train
        stop = min(self.total_steps, until) if until is not None else self.total_steps
        sample_every = tc.sample_every or max(1, round((tc.sample_every_epochs or 1.0) * self.steps_per_epoch))
        checkpoint_every = tc.checkpoint_every or sample_every
        batches = self.loader.batches()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        window_loss, window_n, window_images, window_start = 0.0, 0, 0, time.perf_counter()
        images_per_step = tc.batch_size * tc.grad_accum
        loss = None
        try:
            while self.step < stop:
                loss, grad_norm = self.train_step(batches)
                window_loss, window_n = window_loss + loss, window_n + 1
                window_images += images_per_step
                bar.update(1)
                last = self.step == stop
                if self.step % tc.log_every == 0 or last:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    rate = window_images / elapsed
                    row = {"loss": window_loss / window_n, "lr": self.optimizer.param_groups[0]["lr"],
                           "grad_norm": grad_norm.item(), "images_per_s": rate, "epoch": self.loader.epoch}
                    sums, counts = self._buckets.cpu().double()
                    width = self.diffusion.num_steps // TIMESTEP_BUCKETS
                    row.update({f"loss_t{i * width}": float(sums[i] / counts[i]) for i in range(TIMESTEP_BUCKETS)
                                if counts[i] > 0})
                    self.logger.log(self.step, **row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.0f}", lr=f"{row['lr']:.1e}")
                    window_loss, window_n, window_images, window_start = 0.0, 0, 0, time.perf_counter()
                    self._buckets.zero_()
                if self.step % sample_every == 0 or self.step == self.total_steps:
                    self.sample_grid()
                if tc.fid_every and (self.step % tc.fid_every == 0 or self.step == self.total_steps):
                    self.logger.log(self.step, **self.measure_fid())
                if self.step % checkpoint_every == 0 or last:
                    self.save_checkpoint()
                    window_start = time.perf_counter()  # do not count grid/checkpoint time against images/s
        finally:
            bar.close()
        return self.finish(loss)

    def finish(self, loss: float | None) -> TrainResult:
        rows = read_metrics(self.logger.jsonl)
        plot_loss_curve(rows, self.run_dir / "loss_curve.png")
        plot_loss_by_timestep(rows, self.run_dir / "loss_by_timestep.png")
        summary = convergence_summary(rows)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        self.logger.close()
        return TrainResult(self.run_dir, self.step, loss, summary)

    @torch.no_grad()
    def measure_fid(self) -> dict[str, float]:
        """FID of ``fid_num`` EMA samples (the grid's sampler) against cached reference statistics of the data."""
        from ..eval import MnistClassifier
        from ..eval.inception import InceptionFeatures
        from ..eval.reference import reference_stats_with_fallback

        tc = self.config.train
        if self._fid_extractor is None:
            with torch.random.fork_rng(devices=[]):  # building a network must not move the training RNG
                self._fid_extractor = MnistClassifier() if tc.fid_features == "classifier" else InceptionFeatures()
            self._fid_reference = reference_stats_with_fallback(
                self.config.data.name, self._fid_extractor, split="test", num=tc.fid_ref_num,
                image_size=self.config.data.image_size, progress=self.progress)
        shape = (tc.fid_num, self.unet_config.in_channels, self.unet_config.image_size, self.unet_config.image_size)
        labels = (torch.arange(tc.fid_num) % self.unet_config.num_classes) if self.unet_config.num_classes else None
        images = sample(self.ema.model, self.diffusion, shape, sampler=tc.sample_sampler, steps=tc.sample_steps,
                        labels=labels, generator=torch.Generator().manual_seed(tc.sample_seed + 1),
                        device=self.device, autocast_dtype=self.amp_dtype)
        features = self._fid_extractor(to_uint8(images.cpu()), progress=False)
        name = "fid" if tc.fid_features == "inception" else "fid_classifier"
        return {name: self._fid_reference.fid(features), f"{name}_num": tc.fid_num,
                f"{name}_ref_num": self._fid_reference.n}

    @torch.no_grad()
    def sample_grid(self) -> Path:
        """A grid from the EMA model: DDIM with a fixed seed, so grids are comparable across training."""
        tc = self.config.train
        labels = None
        if self.unet_config.num_classes:
            labels = torch.arange(tc.num_samples) % self.unet_config.num_classes
        shape = (tc.num_samples, self.unet_config.in_channels, self.unet_config.image_size,
                 self.unet_config.image_size)
        images = sample(self.ema.model, self.diffusion, shape, sampler=tc.sample_sampler, steps=tc.sample_steps,
                        labels=labels, generator=torch.Generator().manual_seed(tc.sample_seed), device=self.device,
                        autocast_dtype=self.amp_dtype)
        path = self.run_dir / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        uint8 = to_uint8(images.cpu())
        save_grid(uint8, path)
        save_grid(uint8, self.run_dir / "samples" / "latest.png")
        self.logger.image("samples", make_grid(uint8), self.step)
        return path
