"""Progressive distillation (Salimans & Ho 2022): a run's DDIM sampler halved round by round into a few-step student.

``ddpmkit distill RUN --steps K --out RUN2`` (:mod:`.cli`) checks everything first (:mod:`.plan`), then runs the
rounds (:mod:`.trainer`) over the math of :mod:`.method`; RUN2 samples with DDIM over its K trailing steps through
``ddpmkit sample``, ``eval``, the demo and ``Pipeline``, which refuse any other sampler for it.
"""

from .method import distill_loss, halving_rounds, round_grids, target_from, teacher_target, truncated_snr_weight
from .plan import DistillPlan, DistillSettings, plan_distillation
from .trainer import Distiller, DistillResult

__all__ = ["DistillPlan", "DistillResult", "DistillSettings", "Distiller", "distill_loss", "halving_rounds",
           "plan_distillation", "round_grids", "target_from", "teacher_target",
           "truncated_snr_weight"]
