"""The training loop, readable top to bottom: data → noise → loss → AdamW → EMA, then the hooks that are due.

Building the pieces from a config lives in :mod:`.builders`, saving and restoring them in :mod:`.state`, and
everything the loop does besides training (metrics, grids, FID, checkpoints) in :mod:`.hooks`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..atomic import atomic_write_text
from ..checkpoint import TRAINING_FILES, load_checkpoint, save_checkpoint
from ..config import RunConfig
from ..data import BatchLoader, ImageArray, load_dataset
from ..device import autocast, autocast_dtype, configure_backend, resolve_precision, select_device
from ..errors import DdpmkitError
from ..lora.base import LoRABase
from ..models import UNet
from ..run import RunFolder
from ..sampling import sample
from ..timestep_sampler import make_timestep_sampler
from ..viz import to_uint8
from .builders import build_diffusion, build_optimizer, build_unet_config, check_resumable, validate_train_config
from .ema import EMA
from .hooks import Hook, Throughput, TimestepLosses, default_hooks, run_hooks
from .lr import lr_at
from .metrics import MetricsLogger, read_metrics
from .plots import convergence_summary, plot_loss_by_timestep, plot_loss_curve
from .state import Stateful, TrainingState


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float | None
    summary: dict[str, Any]


class Trainer:
    """Owns one run folder. ``Trainer(config, run_dir).fit()`` trains; ``resume=`` continues a checkpoint exactly.

    ``hooks`` replaces the default metrics/grid/FID/checkpoint hooks; ``extras`` are more stateful objects
    (``state_dict``/``load_state_dict``) saved in every checkpoint and restored on resume. With ``config.lora.base``
    set it is a LoRA run: the base's UNet with its EMA weights, frozen, and adapters that alone train
    (:mod:`ddpmkit.lora.base`); the adapter is exported into the run folder when training ends.
    """

    def __init__(self, config: RunConfig, run_dir: Path, resume: Path | None = None, progress: bool = True,
                 data: ImageArray | None = None, hooks: list[Hook] | None = None,
                 extras: dict[str, Stateful] | None = None):
        self.config, self.run, self.progress = config, RunFolder(run_dir), progress
        tc = config.train
        validate_train_config(config)
        self.device = select_device(tc.device)
        configure_backend(self.device)
        self.precision = resolve_precision(tc.precision, self.device)
        self.amp_dtype = autocast_dtype(self.precision, self.device)

        resume_tensors, resume_state = (None, None)
        if resume is not None:
            _, resume = RunFolder.locate(resume)
            resume_tensors, resume_state = load_checkpoint(resume, required=TRAINING_FILES)

        self.data = data if data is not None else load_dataset(config.data.name, "train", config.data.image_size,
                                                               progress=progress)
        self.diffusion = build_diffusion(config)
        self.lora = LoRABase.load(config.lora.base) if config.lora.base is not None else None
        if self.lora is not None:  # adapting a trained model: its UNet, checked against the data and diffusion
            self.unet_config = self.lora.fit(self.data, self.diffusion)
        else:
            self.unet_config = build_unet_config(config, self.data)
        if resume_state is not None:
            # the label dropout is a training setting stored with the model: a resumed run keeps the one it was
            # trained with (runs from before the default became 0.1 have 0.0)
            was = resume_state.get("unet", {}).get("class_dropout_prob", self.unet_config.class_dropout_prob)
            self.unet_config = dataclasses.replace(self.unet_config, class_dropout_prob=was)
            check_resumable(resume_state, config, self.unet_config, self.diffusion, resume, self.run)
            if self.lora is not None:
                self.lora.check_resume(resume_state, resume)

        torch.manual_seed(tc.seed)
        model = UNet(self.unet_config)
        if self.lora is not None:
            self.lora.adapt(model, config.lora)  # base weights in, adapters injected, everything else frozen
        model = model.to(self.device)
        gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        self.state = TrainingState(
            model=model,
            ema=EMA(model, tc.ema_decay, tc.ema_warmup),
            optimizer=build_optimizer(model, config),
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16),
            loader=BatchLoader(self.data, tc.batch_size, shuffle=True, hflip=config.data.hflip, seed=tc.seed),
            generator=torch.Generator(gen_device).manual_seed(tc.seed),
            device=self.device,
        )
        self.steps_per_epoch = math.ceil(len(self.loader) / tc.grad_accum)
        self.total_steps = tc.steps if tc.steps is not None else max(1, round(tc.epochs * self.steps_per_epoch))
        self.timestep_sampler = (None if tc.timestep_sampler == "uniform" else
                                 make_timestep_sampler(tc.timestep_sampler, self.diffusion.num_steps,
                                                       self.diffusion.schedule.snr.double().cpu().numpy(),
                                                       tc.log_sigma_mean, tc.log_sigma_std))
        if self.timestep_sampler is not None:  # its loss history is part of the checkpoint: resume stays exact
            self.state.register("timestep_sampler", self.timestep_sampler)
        for name, obj in (extras or {}).items():
            self.state.register(name, obj)
        if resume_state is not None:
            self.state.load_checkpoint(resume_tensors, resume_state)
        self.run.path.mkdir(parents=True, exist_ok=True)
        config.save(self.run.config_file)
        self.logger = MetricsLogger(self.run, tc.tensorboard, resume_step=self.step if resume else None)
        self.hooks = hooks if hooks is not None else default_hooks(config, self.steps_per_epoch, progress)
        self.timestep_losses = TimestepLosses(self.diffusion.num_steps, self.device)
        self.throughput = Throughput()
        self.last_grad_norm = torch.zeros(())
        self.bar: tqdm | None = None
        self.eta_reported = False
        self.stopped_by_time = False  # set by fit: whether train.max_minutes ended it

    # the state's parts, by name
    model = property(lambda self: self.state.model)
    ema = property(lambda self: self.state.ema)
    optimizer = property(lambda self: self.state.optimizer)
    loader = property(lambda self: self.state.loader)
    generator = property(lambda self: self.state.generator)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def run_dir(self) -> Path:
        return self.run.path

    # ----- one optimizer step -------------------------------------------------------------------------------

    def train_step(self, batches) -> tuple[float, torch.Tensor]:
        """Forward and backward ``grad_accum`` micro-batches, clip, AdamW, EMA. Returns (loss, grad-norm tensor)."""
        tc, state = self.config.train, self.state
        lr = lr_at(state.step, tc.lr, tc.warmup_steps, self.total_steps, tc.min_lr_ratio)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for _ in range(tc.grad_accum):
            x0, labels = next(batches)
            if self.device.type == "cuda":  # page-locked, so the copy is a DMA that overlaps the GPU's work
                x0 = x0.pin_memory()
            x0 = x0.to(self.device, non_blocking=True)
            model_kwargs = {"labels": labels.to(self.device)} if self.unet_config.num_classes else {}
            t = t_weights = None
            if self.timestep_sampler is not None:
                t, t_weights = self.timestep_sampler.sample(x0.shape[0], self.device, state.generator)
            with autocast(self.device, self.amp_dtype):
                terms = self.diffusion.training_losses(state.model, x0, model_kwargs, t=t, generator=state.generator,
                                                       t_weights=t_weights)
            if self.timestep_sampler is not None:
                self.timestep_sampler.update(terms.t, terms.vlb)
            state.scaler.scale(terms.loss / tc.grad_accum).backward()
            total += terms.loss.detach() / tc.grad_accum
            self.timestep_losses.add(terms.t, terms.per_sample)
        loss = total.item()  # the one host sync of the step, for the NaN check and the progress bar
        if not math.isfinite(loss):
            raise DdpmkitError(self._nan_message())
        state.scaler.unscale_(state.optimizer)
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        state.ema.update(state.model)
        state.step += 1
        return loss, grad_norm

    def _nan_message(self) -> str:
        last = self.run.checkpoints()
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
        return (f"loss became NaN/inf at step {self.step + 1}; stopped without saving ({kept}); "
                "lower --lr, keep grad_clip on, or try --precision fp32")

    # ----- the loop -----------------------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> TrainResult:
        """Train to ``total_steps`` (or stop early after step ``until``, as an interruption would).

        With ``train.max_minutes`` the loop also stops once that much wall time has passed since ``fit`` began,
        after the step in flight; every hook then runs (grid, metrics, checkpoint), and ``--resume`` continues
        the same schedule. ``self.stopped_by_time`` says whether it did.
        """
        stop = min(self.total_steps, until) if until is not None else self.total_steps
        max_minutes = self.config.train.max_minutes
        deadline = time.monotonic() + 60 * max_minutes if max_minutes is not None else None
        self.stopped_by_time = False
        images_per_step = self.config.train.batch_size * self.config.train.grad_accum
        batches = self.loader.batches()
        self.bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                        disable=not self.progress, dynamic_ncols=True)
        self.throughput.restart()
        self.eta_reported = False  # the first metric row prints the time this run will take (hooks.eta_message)
        loss = None
        try:
            while self.step < stop:
                loss, self.last_grad_norm = self.train_step(batches)
                self.throughput.add(loss, images_per_step)
                self.bar.update(1)
                if deadline is not None and self.step < stop and time.monotonic() >= deadline:
                    self.stopped_by_time, stop = True, self.step
                run_hooks(self.hooks, self, stop, final=self.stopped_by_time)
        finally:
            self.bar.close()
            self.bar = None
        return self.finish(loss)

    def finish(self, loss: float | None) -> TrainResult:
        rows = read_metrics(self.logger.jsonl)
        plot_loss_curve(rows, self.run.loss_curve)
        plot_loss_by_timestep(rows, self.run.loss_by_timestep)
        summary = convergence_summary(rows)
        atomic_write_text(self.run.summary_file, json.dumps(summary, indent=1))
        if self.lora is not None:
            self.lora.export(self.ema.model, self.config.lora, self.run.path, self.step, self.data)
        self.logger.close()
        return TrainResult(self.run.path, self.step, loss, summary)

    # ----- what hooks call ----------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """checkpoints/step_N with the training state, the model and diffusion configs, and versions."""
        tensors, meta = self.state.to_checkpoint()
        meta.update({
            "unet": self.unet_config.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "config": self.config.to_dict(),
            "data": {"name": self.data.name, "class_names": list(self.data.class_names)},
            "versions": {"ddpmkit": __version__, "torch": torch.__version__},
        })
        if self.lora is not None:
            meta["lora"] = self.lora.meta(self.config.lora)
        path = save_checkpoint(self.run.checkpoint_dir(self.step), tensors, meta)
        self.run.prune_checkpoints(self.config.train.keep_checkpoints)
        if self.lora is not None:  # the adapter as of this checkpoint: an interrupted run still has one
            self.lora.export(self.ema.model, self.config.lora, self.run.path, self.step, self.data)
        return path

    @torch.no_grad()
    def sample_ema(self, num: int, seed: int) -> np.ndarray:
        """``num`` uint8 images from the EMA model with the config's sampler (classes in turn if conditional)."""
        tc, unet = self.config.train, self.unet_config
        model_kwargs = {"labels": torch.arange(num) % unet.num_classes} if unet.num_classes else None
        images = sample(self.ema.model, self.diffusion, (num, unet.in_channels, unet.image_size, unet.image_size),
                        sampler=tc.sample_sampler, steps=tc.sample_steps, spacing=tc.sample_spacing,
                        model_kwargs=model_kwargs, guidance=tc.sample_guidance if model_kwargs else None,
                        generator=torch.Generator().manual_seed(seed), device=self.device,
                        autocast_dtype=self.amp_dtype)
        return to_uint8(images.cpu())
