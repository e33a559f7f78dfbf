"""Exponential moving average of the weights, used for all sampling."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """θ_ema ← d·θ_ema + (1-d)·θ after each optimizer step.

    With ``warmup`` the decay ramps up as d_t = min(decay, (1 + t)/(10 + t)) (the warm-up used by
    TensorFlow's ExponentialMovingAverage and diffusers' EMAModel), so early averages do not remember the
    random initialisation for 10⁴ steps. Buffers (none in our UNet) are copied, not averaged. Only the parameters
    that train (``requires_grad``) are averaged: a LoRA run's frozen base stays as it is, bit for bit.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._trainable = [p.requires_grad for p in model.parameters()]
        self._ema_params = [e for e, train in zip(self.model.parameters(), self._trainable) if train]
        self.num_updates = 0

    def decay_at(self, num_updates: int) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + num_updates) / (10 + num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Blend the current weights in; returns the decay used."""
        decay = self.decay_at(self.num_updates)
        params = [p.detach() for p, train in zip(model.parameters(), self._trainable) if train]
        torch._foreach_lerp_(self._ema_params, params, 1.0 - decay)  # θ_ema += (1-d)(θ - θ_ema), one fused op
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
        self.num_updates += 1
        return decay

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.model.load_state_dict(state)
        self.num_updates = int(num_updates)
