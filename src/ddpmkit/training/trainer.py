"""The training loop, readable top to bottom: data → noise → loss → AdamW → EMA, then the hooks.

Assembling a run from a config lives in :mod:`.builders` (where the model comes from, a fresh UNet or a LoRA base,
is decided there, once), saving and restoring the state in :mod:`.state`, and everything the loop does besides
training (metrics, the progress bar, grids, FID, checkpoints, the plots and summary at the end, a LoRA run's
adapter export) in hooks (:mod:`.hooks`), which see a :class:`~.hooks.HookContext`, not the Trainer.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..config import RunConfig
from ..data import ImageArray
from ..device import autocast
from ..errors import DdpmkitError
from ..sampling import sample
from ..viz import to_uint8
from .builders import build_training
from .hooks import Hook, HookContext, HookRunner, StepResult
from .lora import LoRABase
from .lr import lr_at
from .plots import convergence_summary
from .state import Stateful


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float | None
    summary: dict[str, Any]


class Trainer:
    """Owns one run folder. ``Trainer(config, run_dir).fit()`` trains; ``resume=`` continues a checkpoint exactly.

    ``hooks`` replaces the default metrics/grid/FID/checkpoint hooks (``trainer.hooks`` may also be reassigned
    before ``fit``); the progress bar, the loss plots, summary.json and the model source's hooks (a LoRA run's
    adapter export) run whatever it holds (``trainer.builtin_hooks``). ``extras`` are more stateful objects
    (``state_dict``/``load_state_dict``) saved in every checkpoint and restored on resume. With
    ``config.lora.base`` set it is a LoRA run (:mod:`ddpmkit.training.lora`): the builder takes the model from the
    base, and the loop is the same.
    """

    def __init__(self, config: RunConfig, run_dir: Path, resume: Path | None = None, progress: bool = True,
                 data: ImageArray | None = None, hooks: list[Hook] | None = None,
                 extras: dict[str, Stateful] | None = None):
        parts = build_training(config, run_dir, resume=resume, data=data, progress=progress, hooks=hooks,
                               extras=extras)
        self.config, self.run, self.data, self.progress = parts.config, parts.run, parts.data, progress
        self.device, self.precision, self.amp_dtype = parts.device, parts.precision, parts.amp_dtype
        self.diffusion, self.unet_config, self.model_source = parts.diffusion, parts.unet_config, parts.source
        self.info, self.state, self.timestep_sampler = parts.info, parts.state, parts.timestep_sampler
        self.steps_per_epoch, self.total_steps = parts.steps_per_epoch, parts.total_steps
        self.logger, self.hooks, self.builtin_hooks = parts.logger, parts.hooks, parts.builtin_hooks
        self.context = HookContext(config=self.config, run=self.run, state=self.state, logger=self.logger,
                                   total_steps=self.total_steps, progress=progress, sample_ema=self.sample_ema,
                                   save_checkpoint=self.save_checkpoint)
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

    @property
    def lora(self) -> LoRABase | None:
        """The base a LoRA run adapts (None for a fresh model)."""
        return self.model_source if isinstance(self.model_source, LoRABase) else None

    # ----- one optimizer step -------------------------------------------------------------------------------

    def train_step(self, batches) -> StepResult:
        """Forward and backward ``grad_accum`` micro-batches, clip, AdamW, EMA."""
        tc, state, device = self.config.train, self.state, self.device
        lr = lr_at(state.step, tc.lr, tc.warmup_steps, self.total_steps, tc.min_lr_ratio)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=device)
        all_terms, all_t_weights = [], []
        for _ in range(tc.grad_accum):
            x0, model_kwargs = next(batches)  # data: images in [-1, 1] and what the model is conditioned on
            if device.type == "cuda":  # page-locked, so the copy is a DMA that overlaps the GPU's work
                x0 = x0.pin_memory()
            x0 = x0.to(device, non_blocking=True)
            model_kwargs = {name: value.to(device) for name, value in model_kwargs.items()}
            t = t_weights = None  # noise levels: uniform (drawn by the diffusion) unless a sampler of t is set
            if self.timestep_sampler is not None:
                t, t_weights = self.timestep_sampler.sample(x0.shape[0], device, state.generator)
            with autocast(device, self.amp_dtype):  # loss
                terms = self.diffusion.training_losses(state.model, x0, model_kwargs, t=t, generator=state.generator,
                                                       t_weights=t_weights)
            if self.timestep_sampler is not None:
                self.timestep_sampler.update(terms.t, terms.vlb)
            state.scaler.scale(terms.loss / tc.grad_accum).backward()
            total += terms.loss.detach() / tc.grad_accum
            all_terms.append(terms)
            all_t_weights.append(t_weights)
        loss = total.item()  # the one host sync of the step, for the NaN check and the progress bar
        if not math.isfinite(loss):
            raise DdpmkitError(self._nan_message())
        state.scaler.unscale_(state.optimizer)  # AdamW on the clipped gradients
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        state.ema.update(state.model)  # EMA
        state.step += 1
        return StepResult(loss, grad_norm, all_terms, all_t_weights)

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
        the same schedule. ``self.stopped_by_time`` says whether it did. When the loop stops (at the end or early)
        the end-of-run hooks run: the loss plots, summary.json, a LoRA run's adapter.
        """
        stop = min(self.total_steps, until) if until is not None else self.total_steps
        max_minutes = self.config.train.max_minutes
        deadline = time.monotonic() + 60 * max_minutes if max_minutes is not None else None
        self.stopped_by_time = False
        hooks, ctx = self._hook_runner(), self.context
        batches = self.loader.batches()
        result = None
        hooks.start(ctx)
        try:
            while self.step < stop:
                result = self.train_step(batches)
                if deadline is not None and self.step < stop and time.monotonic() >= deadline:
                    self.stopped_by_time, stop = True, self.step
                hooks.after_step(ctx, result, stop, final=self.stopped_by_time)
        finally:
            hooks.close()
        hooks.end(ctx)
        summary = convergence_summary(self.logger.rows) if self.logger is not None else {}
        if self.logger is not None:
            self.logger.close()
        return TrainResult(self.run.path, self.step, result.loss if result is not None else None, summary)

    def _hook_runner(self) -> HookRunner:
        return HookRunner([*self.hooks, *self.builtin_hooks])

    # ----- the two actions hooks may ask for ----------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """checkpoints/step_N: the training state beside what the run is (:class:`~ddpmkit.run.RunInfo`)."""
        tensors, training = self.state.to_checkpoint()
        meta = {**dataclasses.replace(self.info, step=self.step).to_state(), **training}
        path = save_checkpoint(self.run.checkpoint_dir(self.step), tensors, meta)
        self.run.prune_checkpoints(self.config.train.keep_checkpoints)
        self._hook_runner().saved(self.context, path)
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
