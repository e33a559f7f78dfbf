"""The base model a LoRA run adapts: what the Trainer asks of it when ``config.lora.base`` is set.

The Trainer builds the base's UNet (its config, not the run config's model section), loads the base checkpoint's
EMA weights (what users sample), injects the adapters and freezes the rest (:meth:`LoRABase.adapt`); the
optimizer and the EMA then see only the adapters. Checkpoints hold the whole adapted model and a ``lora`` entry
in state.json (rank, α, targets, the base's fingerprint); at the end of training the adapter alone is exported
from the EMA model into the run folder (:meth:`LoRABase.export`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint
from ..config import LoRAConfig
from ..data import ImageArray
from ..diffusion import Diffusion
from ..errors import DdpmkitError
from ..models import UNet, UNetConfig
from ..run import RunFolder
from .adapter import AdapterInfo, inject, model_fingerprint, save_adapter, short


@dataclass
class LoRABase:
    """A checkpoint's EMA weights (as stored), its UNet config and state, and their fingerprint."""

    checkpoint: Path
    state: dict[str, Any]
    unet: UNetConfig
    weights: dict[str, Tensor]
    fingerprint: str

    @classmethod
    def load(cls, path: str | Path) -> LoRABase:
        """From a run folder (its newest checkpoint) or a checkpoint folder."""
        _, checkpoint = RunFolder.locate(path)
        tensors, state = load_checkpoint(checkpoint, names=("ema",))
        if state.get("lora"):
            raise DdpmkitError(f"{checkpoint} is itself a LoRA run; merge it into a standalone run first "
                               "(ddpmkit lora merge) and adapt that")
        if "ema" not in tensors:
            raise DdpmkitError(f"{checkpoint} has no EMA weights (ema.safetensors) to adapt")
        if "unet" not in state or "diffusion" not in state:
            raise DdpmkitError(f"{checkpoint}/state.json lacks the model or diffusion config; it is not a complete "
                               "ddpmkit checkpoint")
        unet = UNetConfig.from_dict(state["unet"])
        model = UNet(unet)
        model.load_state_dict(tensors["ema"])  # the canonical layout (older checkpoints are renamed on load)
        return cls(Path(os.path.abspath(checkpoint)), state, unet, model.state_dict(), model_fingerprint(model))

    def fit(self, data: ImageArray, diffusion: Diffusion) -> UNetConfig:
        """The base's UNet config, once the data's shape and labels and the diffusion are checked to suit it."""
        u, where = self.unet, f"the base {self.checkpoint}"
        if (data.image_size, data.channels) != (u.image_size, u.in_channels):
            raise DdpmkitError(f"{where} takes {u.image_size}px images with {u.in_channels} channel(s) but "
                               f"{data.name} has {data.image_size}px with {data.channels}; set "
                               f"data.image_size={u.image_size} or use data with {u.in_channels} channel(s)")
        if u.num_classes is not None and not 1 <= data.num_classes <= u.num_classes:
            raise DdpmkitError(f"{where} is class-conditional with {u.num_classes} classes but {data.name} has "
                               f"{data.num_classes or 'no'} classes")
        if diffusion.to_dict() != self.state["diffusion"]:
            raise DdpmkitError(f"the diffusion settings differ from those of {where}; a LoRA run keeps the base's "
                               "diffusion section")
        return u

    def adapt(self, model: nn.Module, lora: LoRAConfig) -> list[str]:
        """Load the base weights into ``model`` and inject the adapters; only they train."""
        model.load_state_dict(self.weights)
        return inject(model, lora.rank, lora.alpha, lora.targets)

    def meta(self, lora: LoRAConfig) -> dict[str, Any]:
        """The ``lora`` entry of a LoRA run's state.json (``Pipeline`` rebuilds the adapted model from it)."""
        return {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets),
                "base_fingerprint": self.fingerprint, "base_checkpoint": str(self.checkpoint)}

    def check_resume(self, state: dict[str, Any], checkpoint: Path) -> None:
        was = state.get("lora", {}).get("base_fingerprint")
        if was is None:
            raise DdpmkitError(f"checkpoint {checkpoint} is not from a LoRA run; resume it with ddpmkit train")
        if was != self.fingerprint:
            raise DdpmkitError(f"checkpoint {checkpoint} adapts base {short(was)} but {self.checkpoint} is "
                               f"{short(self.fingerprint)}; pass the base checkpoint folder it was trained on")

    @torch.no_grad()
    def export(self, ema_model: nn.Module, lora: LoRAConfig, folder: Path, step: int, data: ImageArray) -> Path:
        """``adapter.safetensors`` (the EMA adapter weights) and ``adapter.json`` into ``folder``."""
        info = AdapterInfo(lora.rank, lora.alpha, list(lora.targets), self.fingerprint, str(self.checkpoint), step,
                           {"name": data.name, "class_names": list(data.class_names)})
        return save_adapter(folder, ema_model, info)
