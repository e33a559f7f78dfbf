"""Low-rank adapters on a frozen layer (Hu et al. 2021, "LoRA").

A frozen weight ``W`` (out, in) becomes ``W + s·(α/r)·B·A`` with ``A`` (r, in) and ``B`` (out, r): only ``A`` and
``B`` train, ``r`` is the rank, ``α`` a fixed scale and ``s`` a runtime strength (``--lora-scale``). ``A`` starts as
the layer it adapts would (Kaiming-uniform, like ``nn.Linear``) and ``B`` at zero, so the adapted layer starts
exactly equal to the base. The wrappers keep the base's ``weight`` and ``bias`` under the same names, so a
state dict of the base loads into the adapted model and the adapter is just the ``lora_A``/``lora_B`` entries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DdpmkitError


class LoRALayer(nn.Module):
    """What both wrappers share: rank, α, the runtime scale s, and merging ``W ← W ± s·(α/r)·ΔW``."""

    rank: int
    alpha: float
    weight: nn.Parameter
    lora_A: nn.Parameter
    lora_B: nn.Parameter

    def _init_lora(self, base: nn.Module, a_shape: tuple[int, ...], b_shape: tuple[int, ...], rank: int,
                   alpha: float) -> None:
        self.rank, self.alpha, self.scale = int(rank), float(alpha), 1.0
        self.merged_scale: float | None = None  # the s merged into W, or None while unmerged
        self.weight = base.weight
        self.register_parameter("bias", base.bias)  # None for a layer without bias
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(a_shape, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's and nn.Conv2d's default init
        self.lora_B = nn.Parameter(torch.zeros(b_shape, **like))

    @property
    def factor(self) -> float:
        """s·α/r, the multiplier of B·A."""
        return self.scale * self.alpha / self.rank

    def delta(self) -> Tensor:
        """ΔW = B·A in the shape of ``weight`` (without s·α/r)."""
        return (self.lora_B.flatten(1) @ self.lora_A.flatten(1)).view_as(self.weight)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + s·(α/r)·B·A in place; the forward pass is then the base layer's alone."""
        if self.merged_scale is None:
            self.weight += self.factor * self.delta()
            self.merged_scale = self.scale

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W − s·(α/r)·B·A with the s that was merged (the inverse of :meth:`merge`, up to rounding)."""
        if self.merged_scale is not None:
            self.weight -= self.merged_scale * self.alpha / self.rank * self.delta()
            self.merged_scale = None

    def set_scale(self, scale: float) -> None:
        if self.merged_scale is not None:
            raise DdpmkitError("unmerge the adapters before changing their scale")
        self.scale = float(scale)

    def _adapted(self, x: Tensor, base_out: Tensor) -> Tensor:
        if self.merged_scale is not None or self.scale == 0.0:
            return base_out
        return base_out + self.factor * self._low_rank(x)

    def _low_rank(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class LoRALinear(LoRALayer):
    """``y = x Wᵀ + b + s·(α/r)·(x Aᵀ) Bᵀ`` with A (r, in), B (out, r)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self._init_lora(base, (rank, base.in_features), (base.out_features, rank), rank, alpha)

    def _low_rank(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        return self._adapted(x, F.linear(x, self.weight, self.bias))

    def to_base(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the current (merged or base) weight and bias."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        layer.weight, layer.bias = self.weight, self.bias
        return layer

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}, scale={self.scale}"


class LoRAConv2d(LoRALayer):
    """``y = conv(x, W) + b + s·(α/r)·conv₁ₓ₁(conv(x, A), B)``: A is a conv with the base's kernel, stride and
    padding and r output channels (r, in, kh, kw), B a 1x1 conv r → out (out, r, 1, 1); ΔW = B·A over the
    flattened (in·kh·kw) inputs. Dilation and groups must be 1."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        if base.dilation != (1, 1) or base.groups != 1 or base.padding_mode != "zeros":
            raise DdpmkitError(f"LoRA supports convolutions with dilation 1, groups 1 and zero padding only; this "
                               f"one has dilation {base.dilation}, groups {base.groups}, padding {base.padding_mode}")
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        self.kernel_size, self.stride, self.padding = base.kernel_size, base.stride, base.padding
        self._init_lora(base, (rank, base.in_channels, *base.kernel_size), (base.out_channels, rank, 1, 1), rank,
                        alpha)

    def _low_rank(self, x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, self.lora_A, None, self.stride, self.padding), self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        return self._adapted(x, F.conv2d(x, self.weight, self.bias, self.stride, self.padding))

    def to_base(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the current (merged or base) weight and bias."""
        layer = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        layer.weight, layer.bias = self.weight, self.bias
        return layer

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"rank={self.rank}, alpha={self.alpha}, scale={self.scale}")


def layer_width(layer: nn.Linear | nn.Conv2d) -> int:
    """The largest useful rank of a layer: min(fan-in, out), fan-in = in (Linear) or in·kh·kw (Conv2d), the
    rank bound of ``W`` viewed as the (out, fan-in) matrix that B·A replaces."""
    if isinstance(layer, nn.Conv2d):
        return min(layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1], layer.out_channels)
    return min(layer.in_features, layer.out_features)


def describe(layer: nn.Linear | nn.Conv2d) -> str:
    """``Linear 64→64`` or ``Conv2d 32→64 3x3``."""
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        return f"Conv2d {layer.in_channels}→{layer.out_channels} {kh}x{kw}"
    return f"Linear {layer.in_features}→{layer.out_features}"
