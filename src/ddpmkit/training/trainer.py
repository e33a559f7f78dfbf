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
from ..device import autocast, randn
from ..errors import DdpmkitError
from ..sampling import sample
from ..viz import to_uint8
from .builders import build_training
from .distributed import DistributedOptions
from .hooks import Hook, HookContext, HookRunner, StepResult, is_main_process
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
    base, and the loop is the same. Under torchrun the builder joins the other processes (``distributed``: backend
    and join timeout) and the loop is the same too: each process trains its share of the global batch
    (:mod:`.distributed` says how N processes make one process's step).
    """

    def __init__(self, config: RunConfig, run_dir: Path, resume: Path | None = None, progress: bool = True,
                 data: ImageArray | None = None, hooks: list[Hook] | None = None,
                 extras: dict[str, Stateful] | None = None, distributed: DistributedOptions | None = None):
        parts = build_training(config, run_dir, resume=resume, data=data, progress=progress, hooks=hooks,
                               extras=extras, distributed=distributed)
        self.config, self.run, self.data, self.progress = parts.config, parts.run, parts.data, progress
        self.device, self.precision, self.amp_dtype = parts.device, parts.precision, parts.amp_dtype
        self.diffusion, self.unet_config, self.model_source = parts.diffusion, parts.unet_config, parts.source
        self.info, self.state, self.timestep_sampler = parts.info, parts.state, parts.timestep_sampler
        self.steps_per_epoch, self.total_steps = parts.steps_per_epoch, parts.total_steps
        self.logger, self.hooks, self.builtin_hooks = parts.logger, parts.hooks, parts.builtin_hooks
        self.parallel, self.train_model = parts.parallel, parts.train_model  # DDP(model) under torchrun
        self.lock = parts.lock  # the run folder's writer lock (main process): released when fit returns, or by close
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
        par = self.parallel  # one process: every call below is the identity
        for micro in range(tc.grad_accum):
            x0, model_kwargs = next(batches)  # data: images in [-1, 1] and what the model is conditioned on
            if device.type == "cuda":  # page-locked, so the copy is a DMA that overlaps the GPU's work
                x0 = x0.pin_memory()
            x0 = x0.to(device, non_blocking=True)
            model_kwargs = {name: value.to(device) for name, value in model_kwargs.items()}
            # noise levels t (uniform unless a sampler of t is set) and noise ε, drawn for the whole global batch
            # (every process draws the same) and this process's share kept: N processes draw as one does
            n = par.global_batch(x0.shape[0])
            if self.timestep_sampler is not None:
                t, t_weights = self.timestep_sampler.sample(n, device, state.generator)
            else:
                t, t_weights = self.diffusion.sample_timesteps(n, device, state.generator), None
            t, t_weights = par.keep(t), par.keep(t_weights)
            noise = par.keep(randn((n, *x0.shape[1:]), state.generator, device, x0.dtype))
            with par.no_sync(self.train_model, inner=micro < tc.grad_accum - 1):  # all-reduce on the last only
                with autocast(device, self.amp_dtype):  # loss
                    terms = self.diffusion.training_losses(self.train_model, x0, model_kwargs, t=t, noise=noise,
                                                           t_weights=t_weights)
                state.scaler.scale(terms.loss / tc.grad_accum).backward()
            terms, t_weights = par.gather(terms, t_weights)  # the whole batch's t and losses, on every process
            if self.timestep_sampler is not None:
                self.timestep_sampler.update(terms.t, terms.vlb)
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
        self._hold_lock()
        try:
            hooks.start(ctx)
            try:
                while self.step < stop:
                    result = self.train_step(batches)
                    # every process stops at the same step: the first one past the deadline decides
                    if deadline is not None and self.step < stop and self.parallel.any(time.monotonic() >= deadline):
                        self.stopped_by_time, stop = True, self.step
                    hooks.after_step(ctx, result, stop, final=self.stopped_by_time)
            finally:
                hooks.close()
            hooks.end(ctx)
            summary = convergence_summary(self.logger.rows) if self.logger is not None else {}
            if self.logger is not None:
                self.logger.close()
        finally:
            self.close()
        return TrainResult(self.run.path, self.step, result.loss if result is not None else None, summary)

    def close(self) -> None:
        """Give up the run folder (its writer lock): another process may write it now. ``fit`` does so when it
        returns; a later ``fit`` or ``save_checkpoint`` takes it again."""
        if self.lock is not None:
            self.lock.release()

    def _hold_lock(self) -> bool:
        """Hold the writer lock (main process); True when this call took it."""
        if self.lock is None or self.lock.held:
            return False
        self.lock = self.run.acquire_writer()
        return True

    def _hook_runner(self) -> HookRunner:
        return HookRunner([*self.hooks, *self.builtin_hooks])

    # ----- the two actions hooks may ask for ----------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """checkpoints/step_N: the training state beside what the run is (:class:`~ddpmkit.run.RunInfo`). In a
        distributed run every process calls it (each one's RNG state is gathered), rank 0 alone writes, and the
        others wait for it."""
        self.parallel.gather_rng()
        if not is_main_process():
            self.parallel.barrier()
            return self.run.checkpoint_dir(self.step)
        tensors, training = self.state.to_checkpoint()
        meta = {**dataclasses.replace(self.info, step=self.step).to_state(), **training}
        took = self._hold_lock()  # called outside fit (after it returned): be the writer while saving
        try:
            path = save_checkpoint(self.run.checkpoint_dir(self.step), tensors, meta)
            self.run.prune_checkpoints(self.config.train.keep_checkpoints)
            self._hook_runner().saved(self.context, path)
        finally:
            if took:
                self.close()
        self.parallel.barrier()
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
