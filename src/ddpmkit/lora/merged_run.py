"""``ddpmkit lora merge``: a base and an adapter into a standalone run, W ← W + s·(α/r)·B·A in every adapted layer.

The new run folder holds ``config.yaml`` (the base's, with the adapter's data set) and one checkpoint whose
``ema.safetensors`` are the merged weights under the base's parameter names, so ``ddpmkit sample``, ``eval`` and
``Pipeline`` read it as any run; its state.json records the base and adapter it came from (``lora_merged``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..checkpoint import save_checkpoint
from ..errors import DdpmkitError
from ..models import UNet
from ..run import RunFolder, RunInfo
from ..training.lora import LoRABase
from .adapter import apply_adapter, merge, short, strip


def merge_run(base: str | Path, adapter: str | Path, out: str | Path, scale: float = 1.0) -> Path:
    """Write the merged run into ``out`` (which must hold no checkpoint yet); returns its checkpoint folder."""
    try:
        finite = math.isfinite(scale)
    except TypeError:
        finite = False
    if not finite:
        raise DdpmkitError(f"--scale must be a finite number (0 the base, 1 as trained), got {scale}")
    out_run = RunFolder(Path(out))
    if out_run.has_checkpoints():
        raise DdpmkitError(f"{out_run.path} already holds a run; pass another --out")
    out_run.check_new_run_folder()
    out_run.check_no_writer()
    lora_base = LoRABase.load(base)
    model = UNet(lora_base.unet)
    model.load_state_dict(lora_base.weights)
    info = apply_adapter(model, adapter, scale, base_fingerprint=lora_base.fingerprint,
                         base_name=str(lora_base.checkpoint))
    merge(model)
    strip(model)
    base_run, _ = RunFolder.locate(lora_base.checkpoint)
    config = base_run.load_config(lora_base.checkpoint)
    if info.data.get("name"):
        config.data.name = info.data["name"]
    step = int(info.step or 0)
    base_info = lora_base.info
    data = info.data or {"name": base_info.data_name, "class_names": list(base_info.class_names)}
    merged = RunInfo(
        unet=base_info.unet, diffusion=base_info.diffusion, step=step, config=config, data_name=data.get("name"),
        class_names=tuple(data.get("class_names") or ()),
        lora_merged={"base_checkpoint": str(lora_base.checkpoint), "base_fingerprint": short(lora_base.fingerprint),
                     "adapter": os.path.abspath(adapter), "rank": info.rank, "alpha": info.alpha,
                     "targets": info.targets, "scale": scale})
    with out_run.acquire_writer():  # the run's one writer while it is written
        if out_run.has_checkpoints():  # another merge got there first
            raise DdpmkitError(f"{out_run.path} already holds a run; pass another --out")
        out_run.clean_interrupted_saves()
        checkpoint = save_checkpoint(out_run.checkpoint_dir(step), {"ema": model.state_dict()}, merged.to_state())
        config.save(out_run.config_file)
    return checkpoint
