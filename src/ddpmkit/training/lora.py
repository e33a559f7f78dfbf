"""The base model a LoRA run adapts: the model source the builder chooses when ``config.lora.base`` is set.

It names the UNet (the base's config, not the run config's model section, checked against the data and the
diffusion), gives the initial weights (the base checkpoint's EMA weights, what users sample, with adapters injected
and everything else frozen, so the optimizer and the EMA see only the adapters), checks a checkpoint to resume
(adapting the same base), supplies the ``lora`` entry of the run's :class:`~ddpmkit.run.RunInfo` (rank, α, targets,
the base's fingerprint) and the :class:`ExportAdapter` hook, which writes the adapter alone from the EMA model into
the run folder after every checkpoint and when training ends. The loop and the checkpoint code know nothing of LoRA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, load_weights, tensor_file
from ..config import LoRAConfig, RunConfig
from ..data import ImageArray
from ..diffusion import Diffusion
from ..errors import DdpmkitError
from ..lora.adapter import AdapterInfo, inject, model_fingerprint, save_adapter, short
from ..models import UNet, UNetConfig
from ..run import RunFolder, RunInfo
from .hooks import Hook, HookContext


@dataclass
class LoRABase:
    """A checkpoint's EMA weights (as stored), what it says about its run, and the fingerprint of the weights."""

    checkpoint: Path
    info: RunInfo
    weights: dict[str, Tensor]
    fingerprint: str

    @classmethod
    def load(cls, path: str | Path) -> LoRABase:
        """From a run folder (its newest checkpoint) or a checkpoint folder."""
        _, checkpoint = RunFolder.locate(path)
        tensors, state = load_checkpoint(checkpoint, names=("ema",))
        info = RunInfo.from_state(state, checkpoint)
        if info.lora:
            raise DdpmkitError(f"{checkpoint} is itself a LoRA run; merge it into a standalone run first "
                               "(ddpmkit lora merge) and adapt that")
        if "ema" not in tensors:
            raise DdpmkitError(f"{checkpoint} has no EMA weights (ema.safetensors) to adapt")
        model = UNet(info.unet)
        load_weights(model, tensors["ema"], tensor_file(checkpoint, "ema"))  # older layouts are renamed on load
        return cls(Path(os.path.abspath(checkpoint)), info, model.state_dict(), model_fingerprint(model))

    @property
    def unet(self) -> UNetConfig:
        return self.info.unet

    # ----- the model source -----------------------------------------------------------------------------------

    def unet_config(self, config: RunConfig, data: ImageArray, diffusion: Diffusion) -> UNetConfig:
        """The base's UNet config, once the data's shape and labels and the diffusion are checked to suit it."""
        u, where = self.unet, f"the base {self.checkpoint}"
        if (data.image_size, data.channels) != (u.image_size, u.in_channels):
            raise DdpmkitError(f"{where} takes {u.image_size}px images with {u.in_channels} channel(s) but "
                               f"{data.name} has {data.image_size}px with {data.channels}; set "
                               f"data.image_size={u.image_size} or use data with {u.in_channels} channel(s)")
        if u.num_classes is not None and not 1 <= data.num_classes <= u.num_classes:
            raise DdpmkitError(f"{where} is class-conditional with {u.num_classes} classes but {data.name} has "
                               f"{data.num_classes or 'no'} classes")
        if diffusion.to_dict() != self.info.diffusion.to_dict():
            raise DdpmkitError(f"the diffusion settings differ from those of {where}; a LoRA run keeps the base's "
                               "diffusion section")
        return u

    def initialize(self, model: nn.Module, config: RunConfig) -> None:
        """Load the base weights into ``model`` and inject the adapters; only they train."""
        self.adapt(model, config.lora)

    def check_resume(self, info: RunInfo, checkpoint: Path) -> None:
        """The checkpoint to resume must adapt this very base."""
        was = (info.lora or {}).get("base_fingerprint")
        if was is None:
            raise DdpmkitError(f"checkpoint {checkpoint} is not from a LoRA run; resume it with ddpmkit train")
        if was != self.fingerprint:
            raise DdpmkitError(f"checkpoint {checkpoint} adapts base {short(was)} but {self.checkpoint} is "
                               f"{short(self.fingerprint)}; pass the base checkpoint folder it was trained on")

    def lora_entry(self, config: RunConfig) -> dict[str, Any]:
        """The ``lora`` entry of the run's RunInfo (``Pipeline`` rebuilds the adapted model from it)."""
        return self.meta(config.lora)

    def hooks(self, config: RunConfig, data: ImageArray) -> list[Hook]:
        return [ExportAdapter(self, data)]

    # ----- the pieces ------------------------------------------------------------------------------------------

    def adapt(self, model: nn.Module, lora: LoRAConfig) -> list[str]:
        """Load the base weights into ``model`` and inject the adapters; only they train."""
        model.load_state_dict(self.weights)
        return inject(model, lora.rank, lora.alpha, lora.targets)

    def meta(self, lora: LoRAConfig) -> dict[str, Any]:
        return {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets),
                "base_fingerprint": self.fingerprint, "base_checkpoint": str(self.checkpoint)}

    @torch.no_grad()
    def export(self, ema_model: nn.Module, lora: LoRAConfig, folder: Path, step: int, data: ImageArray) -> Path:
        """``adapter.safetensors`` (the EMA adapter weights) and ``adapter.json`` into ``folder``."""
        info = AdapterInfo(lora.rank, lora.alpha, list(lora.targets), self.fingerprint, str(self.checkpoint), step,
                           {"name": data.name, "class_names": list(data.class_names)})
        return save_adapter(folder, ema_model, info)


class ExportAdapter(Hook):
    """The adapter as of each checkpoint (an interrupted run still has one) and of the end of training."""

    def __init__(self, base: LoRABase, data: ImageArray):
        super().__init__(None)
        self.base, self.data = base, data
        self.exported_at: int | None = None

    def _export(self, ctx: HookContext) -> None:
        self.base.export(ctx.ema.model, ctx.config.lora, ctx.run.path, ctx.step, self.data)
        self.exported_at = ctx.step

    def saved(self, ctx: HookContext, checkpoint: Path) -> None:
        self._export(ctx)

    def end(self, ctx: HookContext) -> None:
        if self.exported_at != ctx.step:  # the checkpoint at this step exported it already
            self._export(ctx)
