"""Training state: everything a run needs to continue exactly, saved and restored by one object.

A checkpoint holds the model, the EMA, the optimizer, the RNGs (the global CPU/CUDA ones and the trainer's
generator), the data loader's position, the fp16 GradScaler and the step. Anything a later feature adds
(an importance sampler's loss history, say) is registered with :meth:`TrainingState.register` under a name: its
``state_dict()`` is split into tensors (``NAME.safetensors``) and JSON values (``state.json[NAME]``), and
``load_state_dict()`` gets the same dict back on resume, so saving and restoring cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..checkpoint import optimizer_from_flat, optimizer_to_flat
from ..data import BatchLoader
from ..errors import DdpmkitError
from .ema import EMA


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def split_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A flat state dict into (tensors for safetensors, JSON-safe values)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    return tensors, {k: v for k, v in state.items() if not isinstance(v, Tensor)}


class TrainingState:
    """The model, EMA, optimizer, GradScaler, loader position, RNGs and step of one run, and registered extras."""

    def __init__(self, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 loader: BatchLoader, generator: torch.Generator, device: torch.device):
        self.model, self.ema, self.optimizer, self.scaler = model, ema, optimizer, scaler
        self.loader, self.generator, self.device = loader, generator, device
        self.step = 0
        self.extras: dict[str, Stateful] = {}

    def register(self, name: str, obj: Stateful) -> None:
        """Save and restore ``obj`` with the rest (its name becomes a file name and a state.json key)."""
        if name in self.extras or name in ("model", "ema", "optimizer", "rng", "loader", "step", "scaler"):
            raise ValueError(f"training state '{name}' is already taken")
        self.extras[name] = obj

    def to_checkpoint(self) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        """(tensor files, state.json fields) for :func:`ddpmkit.checkpoint.save_checkpoint`."""
        opt_tensors, opt_meta = optimizer_to_flat(self.optimizer)
        rng = {"torch_cpu": torch.get_rng_state(), "generator": self.generator.get_state().cpu()}
        if self.device.type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state()
        tensors = {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": opt_tensors,
                   "rng": rng}
        meta: dict[str, Any] = {"step": self.step, "ema_updates": self.ema.num_updates, "epoch": self.loader.epoch,
                                "loader": self.loader.state_dict(), "optimizer": opt_meta}
        if self.scaler.is_enabled():
            meta["scaler"] = self.scaler.state_dict()
        for name, obj in self.extras.items():
            group, meta[name] = split_tensors(obj.state_dict())
            if group:  # no NAME.safetensors for state that is JSON only
                tensors[name] = group
        return tensors, meta

    def load_checkpoint(self, tensors: dict[str, dict[str, Tensor]], state: dict[str, Any]) -> None:
        """Restore everything :meth:`to_checkpoint` wrote."""
        self.model.load_state_dict(tensors["model"])
        self.ema.load_state_dict(tensors["ema"], state["ema_updates"])
        try:
            self.optimizer.load_state_dict(optimizer_from_flat(tensors.get("optimizer", {}), state["optimizer"]))
        except ValueError as exc:  # another parameter layout (e.g. a checkpoint from before per-block emb_proj)
            raise DdpmkitError(f"the optimizer state does not match this model's parameters ({exc}); the checkpoint "
                               "is from an older ddpmkit: sample from it, or train a new run") from None
        self.loader.load_state_dict(state["loader"])
        rng = tensors.get("rng", {})
        torch.set_rng_state(rng["torch_cpu"])
        self.generator.set_state(rng["generator"].to(torch.uint8))
        if self.device.type == "cuda" and "torch_cuda" in rng:
            torch.cuda.set_rng_state(rng["torch_cuda"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        for name, obj in self.extras.items():
            obj.load_state_dict({**state.get(name, {}), **tensors.get(name, {})})
        self.step = int(state["step"])
