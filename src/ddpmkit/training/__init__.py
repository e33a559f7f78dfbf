"""Training: the Trainer loop, its state, hooks and builders, EMA, LR schedule, metrics and plots."""

from .builders import build_diffusion, build_optimizer, build_unet_config, validate_train_config
from .ema import EMA
from .hooks import Hook
from .lr import lr_at
from .state import TrainingState
from .trainer import Trainer, TrainResult

__all__ = ["EMA", "Hook", "TrainResult", "Trainer", "TrainingState", "build_diffusion", "build_optimizer",
           "build_unet_config", "lr_at", "validate_train_config"]
