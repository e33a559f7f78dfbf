"""The distillation loop (Salimans & Ho 2022, algorithm 2), resumable exactly, and the run it writes.

    teacher ← the run's EMA weights
    for n in rounds (N/2, N/4, …, K):
        student ← teacher; EMA ← student; Adam(lr) afresh                      ("init student from teacher")
        repeat iters_per_round times:
            x, labels ← a data batch; j ~ U{0..n-1}; ε ~ N(0, I); labels → null with the teacher's dropout p
            loss = w(λ_t) ‖x̂_θ(z_t) − x̃‖²  (:func:`ddpmkit.distill.method.distill_loss`); Adam step; EMA update
        save the round's student; teacher ← its EMA                             ("student becomes next teacher")

A checkpoint (``RUN2/checkpoints/step_<iterations so far>``, written atomically by
:func:`ddpmkit.checkpoint.save_checkpoint`) holds the student (``model``), its EMA (``ema``, what sampling reads),
the round's ``teacher``, the Adam state and the RNG states, and its state.json the student's config (sampling: DDIM
over its n trailing steps), the data loader's position and the round and iteration. One is written every
:data:`~ddpmkit.distill.plan.CHECKPOINT_EVERY` iterations and at the end of every round; each round's last stays,
so a run distilled to 4 steps also holds its 8-step student. All randomness (t, ε, label dropout) comes from one
generator saved with the rest, and the student runs without dropout layers, so a resumed distillation is bitwise
the uninterrupted one.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import (
    TRAINING_FILES,
    load_checkpoint,
    load_weights,
    optimizer_from_flat,
    optimizer_to_flat,
    read_state,
    save_checkpoint,
)
from ..data import BatchLoader, ImageArray, load_dataset
from ..device import autocast, autocast_dtype, configure_backend, randn, resolve_precision, select_device
from ..errors import DdpmkitError
from ..models import UNet
from ..run import RunInfo
from ..sampling import NULL_LABEL
from ..training import EMA
from ..training.metrics import MetricsLogger
from .method import distill_loss, round_grids
from .plan import CHECKPOINT_EVERY, DistillPlan

LOG_EVERY = 10  # iterations per metrics row


@dataclass
class DistillResult:
    """Where the distillation stands when :meth:`Distiller.fit` returns."""

    checkpoint: Path | None   # the newest checkpoint
    iteration: int            # iterations over all rounds so far
    complete: bool            # every round done
    wall_seconds: float       # over every command that ran this distillation
    cpu_seconds: float


def _adam(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over the student at a constant ``lr``, PyTorch's default β = (0.9, 0.999) and ε = 1e-8 (algorithm 2
    leaves the optimizer open), fused where the build has it."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


class Distiller:
    """Runs one :class:`~ddpmkit.distill.plan.DistillPlan`: ``Distiller(plan).fit()`` (``until`` stops early after
    that many iterations over all rounds, as an interruption would)."""

    def __init__(self, plan: DistillPlan, device: str = "auto", precision: str = "auto", progress: bool = True,
                 data: ImageArray | None = None, checkpoint_every: int = CHECKPOINT_EVERY):
        self.plan, self.settings, self.run = plan, plan.settings, plan.out
        info, config = plan.info, plan.info.config
        self.device = select_device(device)
        configure_backend(self.device)
        self.precision = resolve_precision(precision, self.device)
        self.amp_dtype = autocast_dtype(self.precision, self.device)
        self.progress, self.checkpoint_every = progress, int(checkpoint_every)
        self.teacher_config, self.diffusion, self.unet = config, info.diffusion, info.unet
        self.data = data if data is not None else load_dataset(config.data.name, "train", config.data.image_size,
                                                               progress=progress)
        self.loader = BatchLoader(self.data, self.settings.batch_size, shuffle=True, hflip=config.data.hflip,
                                  seed=config.train.seed,
                                  model_kwargs=self.data.label_kwargs if self.unet.num_classes else None)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        self.dropout = self.unet.class_dropout_prob if self.unet.num_classes else 0.0
        tensors, _ = load_checkpoint(plan.checkpoint, names=("ema",))
        if "ema" not in tensors:
            raise DdpmkitError(f"{plan.checkpoint} has no EMA weights (ema.safetensors), the weights a student is "
                               "distilled from")
        self.teacher = self._model(tensors["ema"], plan.checkpoint)
        self.student = self._model(tensors["ema"], plan.checkpoint)  # round 1 starts from the teacher
        self.ema = EMA(self.student, config.train.ema_decay, config.train.ema_warmup)
        self.optimizer = _adam(self.student, self.settings.lr)
        self.round, self.iteration = 0, 0  # the round under way and the iterations done in it
        self.window: list[float] = []  # the losses since the last metrics row (saved, so a resumed row is the same)
        self.wall, self.cpu = 0.0, 0.0  # seconds of earlier commands; this one's are counted from _clock
        self._clock = (time.perf_counter(), time.process_time())
        if plan.resume is not None:
            self._restore(plan.resume)

    def _model(self, weights: dict[str, Tensor], where: Path) -> UNet:
        model = UNet(self.unet)
        load_weights(model, weights, where)
        return model.to(self.device).eval()  # eval: no dropout layers, no label dropout inside the model

    # ----- the loop -------------------------------------------------------------------------------------------

    @property
    def total_iterations(self) -> int:
        return len(self.settings.rounds) * self.settings.iters_per_round

    @property
    def done(self) -> int:
        """Iterations over all rounds so far."""
        return self.round * self.settings.iters_per_round + self.iteration

    def fit(self, until: int | None = None) -> DistillResult:
        """Distil to the last round's end (or stop after ``until`` iterations in all); checkpoints as it goes."""
        from tqdm.auto import tqdm

        s = self.settings
        stop = self.total_iterations if until is None else min(until, self.total_iterations)
        lock = self.run.acquire_writer()
        self._clock = (time.perf_counter(), time.process_time())
        newest = self.run.checkpoints()[-1] if self.run.checkpoints() else None
        try:
            self.run.clean_interrupted_saves()
            logger = MetricsLogger(self.run, tensorboard=False, resume_step=self.done if newest else None)
            bar = tqdm(total=self.total_iterations, initial=self.done, unit="it", disable=not self.progress,
                       dynamic_ncols=True)
            batches = self.loader.batches()
            while self.done < stop:
                if self.iteration == s.iters_per_round:  # the round is over: its student teaches the next
                    self._next_round()
                n = s.rounds[self.round]
                grids = round_grids(self.diffusion.num_steps, n)
                bar.set_description(f"round {self.round + 1}/{len(s.rounds)} ({2 * n}→{n} steps)")
                while self.iteration < s.iters_per_round and self.done < stop:
                    self.window.append(self._step(next(batches), grids, n))
                    self.iteration += 1
                    bar.update(1)
                    end = self.iteration == s.iters_per_round
                    if self.iteration % LOG_EVERY == 0 or end or self.done == stop:
                        loss = sum(self.window) / len(self.window)
                        logger.log(self.done, loss=loss, student_steps=n, round=self.round + 1)
                        bar.set_postfix(loss=f"{loss:.4g}")
                        self.window = []
                    if self.iteration % self.checkpoint_every == 0 or end or self.done == stop:
                        newest = self.save()
            bar.close()
            logger.close()
        finally:
            lock.release()
        wall, cpu = self._seconds()
        self.wall, self.cpu = wall, cpu
        return DistillResult(newest, self.done, self.done == self.total_iterations, wall, cpu)

    def _step(self, batch: tuple[Tensor, dict[str, Tensor]], grids: tuple[Tensor, Tensor], n: int) -> float:
        """One Adam step on one batch; returns the loss."""
        x, kwargs = batch
        x = x.to(self.device)
        g = self.generator
        j = torch.randint(0, n, (x.shape[0],), generator=g)
        eps = randn(x.shape, g, self.device, x.dtype)
        if "labels" in kwargs:
            drop = torch.rand(x.shape[0], generator=g) < self.dropout
            kwargs = {**kwargs, "labels": torch.where(drop, torch.full_like(kwargs["labels"], NULL_LABEL),
                                                      kwargs["labels"])}
        kwargs = {k: v.to(self.device) for k, v in kwargs.items()}
        loss = distill_loss(self.student, self.teacher, self.diffusion, x, eps, j, grids, kwargs,
                            autocast=lambda: autocast(self.device, self.amp_dtype))
        value = loss.item()
        if not torch.isfinite(loss):
            raise DdpmkitError(f"the distillation loss became NaN/inf at iteration {self.done + 1}; stopped without "
                               "saving (the last checkpoint is intact): lower --lr or use --precision fp32")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.student)
        return value

    def _next_round(self) -> None:
        """Algorithm 2's outer loop: the finished round's EMA student becomes the teacher and the new student."""
        weights = self.ema.state_dict()
        self.teacher.load_state_dict(weights)
        self.student.load_state_dict(weights)
        config = self.teacher_config.train
        self.ema = EMA(self.student, config.ema_decay, config.ema_warmup)
        self.optimizer = _adam(self.student, self.settings.lr)
        self.round, self.iteration = self.round + 1, 0

    # ----- checkpoints ----------------------------------------------------------------------------------------

    def _seconds(self) -> tuple[float, float]:
        started, cpu_started = self._clock
        return self.wall + time.perf_counter() - started, self.cpu + time.process_time() - cpu_started

    def save(self) -> Path:
        """Write the checkpoint of the iterations so far, then the run's config.yaml; older checkpoints within a
        round are removed once it is written (each round's last is kept)."""
        s, info = self.settings, self.plan.info
        wall, cpu = self._seconds()
        n = s.rounds[self.round]
        config = s.config(self.teacher_config, n, wall, cpu)
        student = RunInfo(unet=self.unet, diffusion=self.diffusion, step=self.done, config=config,
                          data_name=info.data_name, class_names=info.class_names)
        opt_tensors, opt_meta = optimizer_to_flat(self.optimizer)
        tensors = {"model": self.student.state_dict(), "ema": self.ema.state_dict(),
                   "teacher": self.teacher.state_dict(), "optimizer": opt_tensors,
                   "rng": {"torch_cpu": torch.get_rng_state(), "generator": self.generator.get_state()}}
        state: dict[str, Any] = {
            **student.to_state(), "ema_updates": self.ema.num_updates, "loader": self.loader.state_dict(),
            "optimizer": opt_meta,
            "distillation": {"round": self.round, "iteration": self.iteration,
                             "round_complete": self.iteration == s.iters_per_round, "loss_window": self.window,
                             "wall_seconds": wall, "cpu_seconds": cpu}}
        path = save_checkpoint(self.run.checkpoint_dir(self.done), tensors, state)
        config.save(self.run.config_file)
        for old in self.run.checkpoints():  # the round's earlier checkpoints, once a newer one is in place
            if old == path:
                continue
            progress = _distillation_state(old)
            if progress is not None and not progress.get("round_complete"):
                shutil.rmtree(old, ignore_errors=True)
        return path

    def _restore(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint`` exactly: weights, EMA, teacher, Adam, data position, RNGs, round."""
        tensors, state = load_checkpoint(checkpoint, required=(*TRAINING_FILES, "teacher"))
        progress = state.get("distillation")
        if progress is None:
            raise DdpmkitError(f"{checkpoint} is not a distillation checkpoint; pass another --out")
        load_weights(self.teacher, tensors["teacher"], checkpoint)
        load_weights(self.student, tensors["model"], checkpoint)
        self.ema = EMA(self.student, self.teacher_config.train.ema_decay, self.teacher_config.train.ema_warmup)
        self.ema.load_state_dict(tensors["ema"], state["ema_updates"])
        self.optimizer.load_state_dict(optimizer_from_flat(tensors.get("optimizer", {}), state["optimizer"]))
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(tensors["rng"]["torch_cpu"])
        self.generator.set_state(tensors["rng"]["generator"].to(torch.uint8))
        self.round, self.iteration = int(progress["round"]), int(progress["iteration"])
        self.window = [float(v) for v in progress.get("loss_window", [])]
        self.wall, self.cpu = float(progress["wall_seconds"]), float(progress["cpu_seconds"])



def _distillation_state(checkpoint: Path) -> dict[str, Any] | None:
    """The round and iteration a checkpoint of a distillation was written at (None for another checkpoint)."""
    try:
        return read_state(checkpoint).get("distillation")
    except DdpmkitError:
        return None
