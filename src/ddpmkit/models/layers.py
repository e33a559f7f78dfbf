"""UNet building blocks: time embedding, fused GroupNorm(+FiLM)+SiLU, residual block, self- and cross-attention,
resampling, label embedding.

Speed notes (measured, see benchmarks/results/unet.md): the norm + FiLM + SiLU of every ResBlock is one
autograd function (:func:`ddpmkit.models.norm.group_norm_film_act`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.models.norm import group_norm_film_act


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, cos_first: bool = True,
                       freq_shift: float = 0.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (B, dim), float32.

    With ``half = dim // 2`` and ``f_i = max_period ** (-i / (half - freq_shift))`` for ``i = 0 .. half-1``::

        emb(t) = [cos(t f_0), ..., cos(t f_{half-1}), sin(t f_0), ..., sin(t f_{half-1})]

    (Vaswani et al. 2017, sec. 3.5, in the cos-first arrangement of improved-diffusion's
    ``nn.timestep_embedding``; an odd ``dim`` gets one trailing zero). The original DDPM code puts the sines first
    and divides by ``half - 1`` (``cos_first=False, freq_shift=1``: diffusers' ``flip_sin_to_cos=False,
    freq_shift=1`` of the DDPM checkpoints).
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if cos_first else [torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNormAct(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict names) with optional FiLM and SiLU fused in."""

    def __init__(self, num_groups: int, num_channels: int, act: bool = True, eps: float = 1e-5):
        super().__init__(num_groups, num_channels, eps=eps)
        self.act = act

    def forward(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        return group_norm_film_act(x, self.num_groups, self.weight, self.bias, scale, shift, self.act, self.eps)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters (improved-diffusion ``zero_module``): the block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """DDPM residual block with time conditioning (Ho et al. 2020, app. B; improved-diffusion ``ResBlock``).

    ``forward(x, emb)`` takes ``emb = silu(time embedding)`` of shape (B, temb): the UNet applies the SiLU once
    for all blocks (improved-diffusion applies the same ``SiLU`` at the head of every block's ``emb_layers``).
    This block's own projection ``e = emb_proj(emb)`` (diffusers ``ResnetBlock2D.time_emb_proj``) is (B, C_out)
    or (B, 2 C_out). ``h = conv1(silu(GN(x)))``; then with ``time_conditioning="scale_shift"``:
    ``h = conv2(dropout(silu(GN(h) * (1 + s) + t)))`` where ``(s, t) = e``;
    with ``"additive"``: ``h = conv2(dropout(silu(GN(h + e))))``.
    Output ``skip(x) + h``; ``conv2`` is zero-initialised so the block starts as (a projection of)
    the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, groups: int, dropout: float, scale_shift: bool):
        super().__init__()
        self.in_ch, self.out_ch, self.scale_shift = in_ch, out_ch, scale_shift
        self.norm1 = GroupNormAct(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = GroupNormAct(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.norm1(x))
        emb_out = self.emb_proj(emb)
        if self.scale_shift:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.norm2(h, scale, shift)
        else:
            h = self.norm2(h + emb_out.to(h.dtype)[:, :, None, None])
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions with a residual (DDPM ``AttnBlock``).

    With ``u = GN(x)`` as tokens (B, HW, C), each head ``i`` (channels ``[i d, (i + 1) d)``, ``d = C / heads``) is
    ``softmax(q_i k_i^T / sqrt(d)) v_i`` with ``q = to_q(u)``, ``k = to_k(u)``, ``v = to_v(u)``; the heads are
    concatenated and the output is ``x + to_out(heads)``, ``to_out`` zero-initialised (improved-diffusion).
    The projection names are diffusers' ``Attention`` ones (``to_q``, ``to_k``, ``to_v``, ``to_out``), for LoRA
    and export. Checkpoints with the older fused 1x1 conv ``qkv`` (channels ``[q | k | v]``) and ``proj`` load
    into this layout (:meth:`_load_from_state_dict`).
    """

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = GroupNormAct(groups, channels, act=False)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = zero_(nn.Linear(channels, channels))

    def _split_heads(self, tokens: Tensor) -> Tensor:
        """(B, L, C) -> (B, heads, L, d), a view with stride 1 on d."""
        B, L, C = tokens.shape
        return tokens.view(B, L, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        # (B, C, H, W) -> (B, HW, C): a view on channels_last activations, one copy on NCHW ones
        u = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)
        # SDPA's fused CPU kernel (flash attention) needs stride 1 on the last axis (d), which these views of the
        # (B, L, C) projections have: no copies. Without it, SDPA falls back to the math path (bmm + softmax + mask
        # checks): attention fwd+bwd 29 vs 71 ms at 16x16, batch 32, 128 ch, measured on the old fused-qkv conv
        q, k, v = (self._split_heads(p(u)) for p in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        h = self.to_out(h.transpose(1, 2).reshape(B, H * W, C))
        return x + h.view(B, H, W, C).permute(0, 3, 1, 2)  # channels_last strides, like x

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Rename the old layout: a 1x1 conv ``qkv`` (3C, C, 1, 1) whose output channels ``[0, C)`` are q,
        ``[C, 2C)`` k and ``[2C, 3C)`` v (heads contiguous within each), and a 1x1 conv ``proj``."""
        if prefix + "qkv.weight" in state_dict:
            weight = state_dict.pop(prefix + "qkv.weight").flatten(1)
            bias = state_dict.pop(prefix + "qkv.bias")
            for name, w, b in zip(("to_q", "to_k", "to_v"), weight.chunk(3), bias.chunk(3)):
                state_dict[f"{prefix}{name}.weight"], state_dict[f"{prefix}{name}.bias"] = w, b
        if prefix + "proj.weight" in state_dict:
            state_dict[prefix + "to_out.weight"] = state_dict.pop(prefix + "proj.weight").flatten(1)
            state_dict[prefix + "to_out.bias"] = state_dict.pop(prefix + "proj.bias")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CrossAttention(nn.Module):
    """Multi-head attention of image tokens (queries) over context tokens (keys and values).

    For queries ``u`` (B, N, C) and context ``c`` (B, L, D), head ``i`` (width ``d = C / heads``) is
    ``softmax(q_i k_iᵀ / sqrt(d)) v_i`` with ``q = to_q(u)``, ``k = to_k(c)``, ``v = to_v(c)``; the heads are
    concatenated and projected by ``to_out``. The names are diffusers' ``Attention`` ones (LoRA targets them).
    """

    def __init__(self, query_dim: int, context_dim: int, num_heads: int):
        super().__init__()
        if query_dim % num_heads:
            raise ValueError(f"query width {query_dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)

    def _split_heads(self, tokens: Tensor) -> Tensor:
        B, L, C = tokens.shape
        return tokens.view(B, L, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, u: Tensor, context: Tensor) -> Tensor:
        B, N, C = u.shape
        q = self._split_heads(self.to_q(u))
        k, v = self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        return self.to_out(h.transpose(1, 2).reshape(B, N, C))


class CrossAttentionBlock(nn.Module):
    """Condition image features on a sequence of context tokens, in the Transformer pattern of Stable Diffusion's
    ``SpatialTransformer`` (Rombach et al. 2022), without its self-attention (the UNet has its own).

    For ``x`` (B, C, H, W) and a context (B, L, D), with ``h`` the H·W tokens of ``proj_in(GN(x))``::

        h = h + CrossAttention(LN₁(h), context)      queries from the image, keys and values from the context
        h = h + FF(LN₂(h))                            FF = Linear(C, 4C) → GELU → Linear(4C, C)
        out = x + proj_out(h)                         proj_out zero-initialised: the block starts as the identity

    Any context of width D plugs in (class-label tokens here; text-encoder tokens later). With one context token
    the softmax has a single key and the attention output no longer depends on the query (it is a per-condition
    vector), so labels are given several tokens each (:class:`LabelEmbedding` with ``tokens > 1``).
    """

    def __init__(self, channels: int, context_dim: int, num_heads: int, groups: int):
        super().__init__()
        self.norm = GroupNormAct(groups, channels, act=False)
        self.proj_in = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = CrossAttention(channels, context_dim, num_heads)
        self.norm2 = nn.LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.proj_out = zero_(nn.Linear(channels, channels))

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        if context is None:  # no condition given (e.g. an unconditional pass of an external-context model)
            return x
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C))  # a view on channels_last x
        h = h + self.attn(self.norm1(h), context.to(h.dtype))
        h = h + self.ff(self.norm2(h))
        return x + self.proj_out(h).view(B, H, W, C).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """3x3 convolution with stride 2 (DDPM ``Downsample`` with ``with_conv=True``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution (DDPM ``Upsample`` with ``with_conv=True``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LabelEmbedding(nn.Module):
    """Class labels -> vectors, plus one "null" class for classifier-free guidance (DiT ``LabelEmbedder``).

    Index ``num_classes`` is the null (unconditional) label; a label of -1 (``ddpmkit.sampling.NULL_LABEL``, what
    guidance passes for "no class") maps to it, so callers need not know the number of classes. In training
    mode, each label is replaced by the null label with probability ``dropout_prob`` (Ho & Salimans 2022);
    ``labels=None`` means null for all. With ``tokens = L > 1`` each label is a sequence of L vectors (B, L, dim)
    for cross-attention; with ``tokens=None`` it is one vector (B, dim), added to the time embedding.
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float = 0.0, tokens: int | None = None):
        super().__init__()
        self.num_classes, self.dropout_prob, self.dim, self.tokens = num_classes, dropout_prob, dim, tokens
        self.embedding = nn.Embedding(num_classes + 1, dim * (tokens or 1))

    def resolve(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """The label indices used: null for None and -1, and (training mode) dropped to null with ``dropout_prob``."""
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        labels = labels.to(device)  # labels given on the CPU to a model on a GPU
        labels = torch.where(labels < 0, self.num_classes, labels)  # -1: the null label
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return labels

    def lookup(self, resolved: Tensor) -> Tensor:
        """Vectors (B, dim), or token sequences (B, tokens, dim), of already resolved label indices."""
        vectors = self.embedding(resolved)
        return vectors if self.tokens is None else vectors.view(-1, self.tokens, self.dim)

    def forward(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        return self.lookup(self.resolve(labels, batch, device))
