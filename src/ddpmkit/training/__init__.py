"""Training: the Trainer loop, the builder that assembles a run, its state, hooks, EMA, LR schedule, metrics and
plots, and the LoRA base a LoRA run takes its model from."""

from .builders import (
    TrainingParts,
    build_diffusion,
    build_optimizer,
    build_training,
    build_unet_config,
    validate_train_config,
)
from .ema import EMA
from .hooks import Hook, HookContext, StepResult
from .lora import LoRABase
from .lr import lr_at
from .state import TrainingState
from .trainer import Trainer, TrainResult

__all__ = ["EMA", "Hook", "HookContext", "LoRABase", "StepResult", "TrainResult", "Trainer", "TrainingParts",
           "TrainingState", "build_diffusion", "build_optimizer", "build_training", "build_unet_config", "lr_at",
           "validate_train_config"]
