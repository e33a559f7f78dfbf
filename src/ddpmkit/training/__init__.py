"""Training: the Trainer loop, EMA, LR schedule, atomic checkpoints, metrics and plots."""

from .checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint
from .ema import EMA
from .lr import lr_at
from .trainer import Trainer, TrainResult, build_diffusion, build_unet_config

__all__ = ["EMA", "TrainResult", "Trainer", "build_diffusion", "build_unet_config", "list_checkpoints",
           "load_checkpoint", "lr_at", "resolve_checkpoint"]
