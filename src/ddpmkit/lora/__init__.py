"""LoRA fine-tuning: low-rank adapters W + s·(α/r)·B·A on a frozen trained UNet.

``ddpmkit lora RUN --data NAME --out DIR`` trains an adapter with the ordinary Trainer (``config.lora``; the base it
adapts is a model source of the training layer, :class:`ddpmkit.training.lora.LoRABase`);
``ddpmkit sample RUN --lora DIR`` and ``Pipeline.from_run(RUN, lora=DIR)`` apply it; ``ddpmkit lora merge``
writes a standalone merged run.
"""

from .adapter import (
    TARGETS,
    AdapterInfo,
    apply_adapter,
    find_targets,
    fingerprint,
    inject,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge,
    model_fingerprint,
    save_adapter,
    set_scale,
    strip,
    unmerge,
)
from .layers import LoRAConv2d, LoRALayer, LoRALinear

__all__ = ["TARGETS", "AdapterInfo", "LoRAConv2d", "LoRALayer", "LoRALinear", "apply_adapter", "find_targets",
           "fingerprint", "inject", "load_adapter", "lora_layers", "lora_state_dict", "merge", "model_fingerprint",
           "save_adapter", "set_scale", "strip", "unmerge"]
