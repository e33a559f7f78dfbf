"""Learning-rate schedule: linear warm-up, then cosine decay (a pure function of the step, so resume is exact)."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """lr(s) = base · (s+1)/W for s < W, then base · (r + (1-r) · ½(1 + cos(π · p))), p = (s-W)/(S-W) ∈ [0, 1].

    ``step`` counts optimizer steps from 0; r = ``min_lr_ratio``; S = ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
