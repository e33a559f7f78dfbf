"""The noise-prediction UNet of DDPM (Ho et al. 2020, appendix B) with improved-diffusion's options.

Structure, for ``L = len(channel_mults)`` levels with ``ch_l = base_channels * channel_mults[l]``::

    conv_in (3x3)                                              -> skip
    level l = 0 .. L-1:  num_res_blocks x [ResBlock(ch_l) (+ Attention)]      each -> skip
                         Downsample (conv stride 2), except the last level     -> skip
    middle:              ResBlock, Attention (if mid_attention), ResBlock
    level l = L-1 .. 0:  (num_res_blocks + 1) x [concat(skip), ResBlock(ch_l) (+ Attention)]
                         Upsample (nearest x2 + conv), except level 0
    out:                 GroupNorm, SiLU, conv_out (3x3, zero-initialised)

Time ``t`` -> sinusoidal(base) -> Linear -> SiLU -> Linear (``4 * base`` dims, DDPM) [+ label embedding]
-> SiLU, then each ResBlock's own ``emb_proj`` Linear gives its scale/shift (or additive bias).

Conditioning on class labels (``num_classes``), chosen by ``conditioning``: ``embedding`` adds a learned vector
per class to the time embedding (DiT, improved-diffusion); ``cross_attention`` turns each label into
``label_tokens`` context tokens that :class:`~ddpmkit.models.layers.CrossAttentionBlock` s attend to after every
ResBlock at ``cross_attention_resolutions`` (and in the middle block when the deepest level is listed), the way
Stable Diffusion conditions on text; ``both`` does both. Any other (B, L, ``context_dim``) sequence can be
passed as ``context=`` (concatenated after the label tokens when there are labels too).

Inputs whose size is not divisible by ``2**(L-1)`` are zero-padded (centred) up to the next multiple and the
output is cropped back, so 28x28, 30x30, 48x48 all work with any number of levels.

Named sizes (``UNetConfig.named``) are YAML files in ``ddpmkit/models/unet_sizes/`` (:mod:`ddpmkit.models.sizes`).

Zero initialisation (improved-diffusion): ``conv_out``, every ResBlock's second conv and every attention
output projection start at zero, so the untrained network outputs exactly 0 and each block starts as the
identity on its residual path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.errors import DdpmkitError
from ddpmkit.models.layers import (
    AttentionBlock,
    CrossAttentionBlock,
    Downsample,
    GroupNormAct,
    LabelEmbedding,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_,
)
from ddpmkit.models.sizes import load_unet_size

_TIME_CONDITIONING = ("scale_shift", "additive")
_CONDITIONING = ("embedding", "cross_attention", "both")


@dataclass
class UNetConfig:
    """Every architectural choice of :class:`UNet`; saved with checkpoints as JSON via :meth:`to_dict`."""

    image_size: int = 28  # H = W of the input; maps attention resolutions to levels, sets the padding
    in_channels: int = 1
    out_channels: int | None = None  # None -> in_channels
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2  # per encoder level; the decoder has num_res_blocks + 1 (DDPM)
    attention_resolutions: tuple[int, ...] = ()  # feature-map sizes (pixels) at which self-attention is used
    num_heads: int = 4  # heads of every attention block, whatever its width
    head_channels: int | None = None  # instead: heads of width head_channels (width // head_channels heads: diffusers)
    dropout: float = 0.0
    time_conditioning: str = "scale_shift"  # or "additive" (DDPM)
    learn_sigma: bool = False  # output 2 * out_channels: prediction + variance interpolation v
    num_classes: int | None = None  # label index num_classes is the null class (classifier-free guidance)
    norm_groups: int = 32
    mid_attention: bool = True  # self-attention in the middle block (DDPM has it)
    class_dropout_prob: float = 0.1  # training-mode label dropout to the null class (classifier-free guidance)
    conditioning: str = "embedding"  # labels: "embedding" (added to the time embedding), "cross_attention", "both"
    cross_attention_resolutions: tuple[int, ...] = ()  # feature-map sizes with cross-attention to the context
    context_dim: int | None = None  # width D of the context tokens (None: 4 * base_channels, the label tokens')
    label_tokens: int = 4  # context tokens per label with cross-attention (one token would make it query-blind)
    channels_last: bool = True  # NHWC convs: CIFAR-sized bf16 inference 84 vs 57 img/s (benchmarks/results)
    time_embedding_order: str = "cos_sin"  # the sinusoid's halves: cos_sin (improved-diffusion) or sin_cos (DDPM)
    time_freq_shift: int = 0  # f_i = 10000^(-i / (half - shift)): 0 (improved-diffusion), 1 (DDPM's checkpoints)

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)
        self.cross_attention_resolutions = tuple(int(r) for r in self.cross_attention_resolutions)
        if self.conditioning not in _CONDITIONING:
            raise DdpmkitError(f"conditioning={self.conditioning!r} is unknown; use one of {list(_CONDITIONING)}")
        if self.conditioning != "embedding" and self.num_classes is not None and not self.cross_attention_resolutions:
            raise DdpmkitError(f"conditioning={self.conditioning} needs cross_attention_resolutions, e.g. "
                               f"[{self.level_resolutions()[-1]}] (the feature-map sizes with cross-attention)")
        if self.label_tokens < 1:
            raise DdpmkitError(f"label_tokens={self.label_tokens} must be at least 1")
        if self.time_embedding_order not in ("cos_sin", "sin_cos"):
            raise DdpmkitError(f"time_embedding_order={self.time_embedding_order!r} is unknown; use cos_sin or sin_cos")
        if self.head_channels is not None and self.head_channels < 1:
            raise DdpmkitError(f"head_channels={self.head_channels} must be positive (or null: num_heads heads)")
        if self.time_conditioning not in _TIME_CONDITIONING:
            raise DdpmkitError(
                f"time_conditioning={self.time_conditioning!r} is unknown; "
                f"use one of {list(_TIME_CONDITIONING)}"
            )
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise DdpmkitError(f"channel_mults={self.channel_mults} must be non-empty positive ints")
        if self.image_size < 1 or self.in_channels < 1 or self.base_channels < 1 or self.num_res_blocks < 1:
            raise DdpmkitError("image_size, in_channels, base_channels and num_res_blocks must be positive")
        for ch in {self.base_channels * m for m in self.channel_mults}:
            if ch % self.norm_groups:
                raise DdpmkitError(
                    f"channel width {ch} is not divisible by norm_groups={self.norm_groups}; "
                    "choose base_channels/channel_mults/norm_groups so every level divides"
                )
            if (self.attention_resolutions or self.mid_attention or self.cross_attention_resolutions) and \
                    ch % (self.head_channels or self.num_heads):
                what = f"head_channels={self.head_channels}" if self.head_channels else f"num_heads={self.num_heads}"
                raise DdpmkitError(f"channel width {ch} is not divisible by {what}")
        unknown = set(self.attention_resolutions + self.cross_attention_resolutions) - set(self.level_resolutions())
        if unknown:
            raise DdpmkitError(
                f"attention resolutions {sorted(unknown)} match no level of a {self.image_size}px UNet with "
                f"{len(self.channel_mults)} levels; its feature-map sizes are {self.level_resolutions()}"
            )
        if self.num_classes is not None and self.num_classes < 1:
            raise DdpmkitError(f"num_classes={self.num_classes} must be positive or None")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.class_dropout_prob <= 1.0:
            raise DdpmkitError("dropout must be in [0, 1) and class_dropout_prob in [0, 1]")

    def heads(self, channels: int) -> int:
        """The number of attention heads at a width: ``num_heads``, or ``channels // head_channels``."""
        return channels // self.head_channels if self.head_channels else self.num_heads

    @property
    def resolved_context_dim(self) -> int:
        """Width of the context tokens the cross-attention blocks take (label tokens have it too)."""
        return self.context_dim or 4 * self.base_channels

    @property
    def label_conditioning(self) -> tuple[bool, bool]:
        """(labels added to the time embedding, labels as cross-attention tokens)."""
        if self.num_classes is None:
            return False, False
        return self.conditioning in ("embedding", "both"), self.conditioning in ("cross_attention", "both")

    @property
    def resolved_out_channels(self) -> int:
        """Output channels: ``out_channels`` (or ``in_channels``), doubled if ``learn_sigma``."""
        out = self.out_channels if self.out_channels is not None else self.in_channels
        return 2 * out if self.learn_sigma else out

    def level_resolutions(self) -> list[int]:
        """Nominal feature-map size of each level: ``ceil(image_size / 2**l)`` (28 -> 28, 14, 7)."""
        return [math.ceil(self.image_size / 2**lvl) for lvl in range(len(self.channel_mults))]

    def to_dict(self) -> dict:
        """JSON-safe dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`DdpmkitError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise DdpmkitError(f"unknown UNetConfig key {key!r}; valid keys: {sorted(names)}")
        return cls(**d)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> UNetConfig:
        """A named size (``tiny``, ``mnist``, ``cifar10``, ``pokemon64``: ``ddpmkit/models/unet_sizes/<name>.yaml``)
        with optional field overrides."""
        return cls.from_dict({**load_unet_size(name), **overrides})


class _Stage(nn.ModuleList):
    """A run of blocks applied in order; ResBlocks also get the (SiLU'd) time embedding, cross-attention blocks
    the context tokens."""

    def forward(self, h: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for block in self:
            if isinstance(block, ResBlock):
                h = block(h, emb)
            elif isinstance(block, CrossAttentionBlock):
                h = block(h, context)
            else:
                h = block(h)
        return h


class UNet(nn.Module):
    """Noise-prediction UNet: ``forward(x, t, labels) -> prediction`` of ``x``'s spatial size.

    See the module docstring for the structure and :class:`UNetConfig` for the options.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        base, groups, mults = cfg.base_channels, cfg.norm_groups, cfg.channel_mults
        temb = 4 * base  # DDPM: time-embedding width is 4x the base channels
        scale_shift = cfg.time_conditioning == "scale_shift"
        res_block = lambda i, o: ResBlock(i, o, temb, groups, cfg.dropout, scale_shift)
        attn = lambda c: AttentionBlock(c, cfg.heads(c), groups)
        attn_levels = {lvl for lvl, r in enumerate(cfg.level_resolutions()) if r in cfg.attention_resolutions}
        cross_levels = {lvl for lvl, r in enumerate(cfg.level_resolutions()) if r in cfg.cross_attention_resolutions}
        ctx = cfg.resolved_context_dim
        cross = lambda c: CrossAttentionBlock(c, ctx, cfg.heads(c), groups)

        def level_blocks(lvl: int, res_in: int, res_out: int) -> list[nn.Module]:
            return ([res_block(res_in, res_out)] + ([attn(res_out)] if lvl in attn_levels else [])
                    + ([cross(res_out)] if lvl in cross_levels else []))

        self.time_mlp = nn.Sequential(nn.Linear(base, temb), nn.SiLU(), nn.Linear(temb, temb))
        in_time, as_tokens = cfg.label_conditioning
        self.label_emb = LabelEmbedding(cfg.num_classes, temb, cfg.class_dropout_prob) if in_time else None
        self.label_tokens = (LabelEmbedding(cfg.num_classes, ctx, cfg.class_dropout_prob, tokens=cfg.label_tokens)
                             if as_tokens else None)
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)

        self.down = nn.ModuleList()
        skip_ch, ch = [base], base
        for lvl, mult in enumerate(mults):
            for _ in range(cfg.num_res_blocks):
                blocks = level_blocks(lvl, ch, base * mult)
                ch = base * mult
                self.down.append(_Stage(blocks))
                skip_ch.append(ch)
            if lvl != len(mults) - 1:
                self.down.append(_Stage([Downsample(ch)]))
                skip_ch.append(ch)

        deepest = len(mults) - 1
        mid = ([res_block(ch, ch)] + ([attn(ch)] if cfg.mid_attention else [])
               + ([cross(ch)] if deepest in cross_levels else []) + [res_block(ch, ch)])
        self.mid = _Stage(mid)

        self.up = nn.ModuleList()
        for lvl, mult in reversed(list(enumerate(mults))):
            for i in range(cfg.num_res_blocks + 1):
                blocks = level_blocks(lvl, ch + skip_ch.pop(), base * mult)
                ch = base * mult
                if lvl and i == cfg.num_res_blocks:
                    blocks.append(Upsample(ch))
                self.up.append(_Stage(blocks))

        self.norm_out = GroupNormAct(groups, ch)
        self.conv_out = zero_(nn.Conv2d(ch, cfg.resolved_out_channels, 3, padding=1))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Split the old layout's shared time projection ``emb_proj.1`` (one Linear to the concatenation of all
        ResBlocks' projections, in ``self.modules()`` order, which is also forward order) into the blocks'
        ``emb_proj``. (Old attention ``qkv``/``proj`` weights are renamed by ``AttentionBlock`` itself.)"""
        if prefix + "emb_proj.1.weight" in state_dict:
            weight = state_dict.pop(prefix + "emb_proj.1.weight")
            bias = state_dict.pop(prefix + "emb_proj.1.bias")
            blocks = [(name, m) for name, m in self.named_modules() if isinstance(m, ResBlock)]
            sizes = [m.emb_proj.out_features for _, m in blocks]
            if weight.shape[0] != sum(sizes):
                raise DdpmkitError(f"old-layout emb_proj has {weight.shape[0]} outputs; this UNet's ResBlocks "
                                   f"need {sum(sizes)}: the weights are for another configuration")
            for (name, _), w, b in zip(blocks, weight.split(sizes), bias.split(sizes)):
                state_dict[f"{prefix}{name}.emb_proj.weight"] = w
                state_dict[f"{prefix}{name}.emb_proj.bias"] = b
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _condition(self, t: Tensor, labels: Tensor | None, context: Tensor | None, batch: int,
                   device: torch.device) -> tuple[Tensor, Tensor | None]:
        """(time embedding [+ label vector], context tokens [label tokens, then ``context``] or None)."""
        if t.ndim == 0:
            t = t.expand(batch)
        cfg = self.config
        sinusoid = timestep_embedding(t.to(device), cfg.base_channels, cos_first=cfg.time_embedding_order == "cos_sin",
                                      freq_shift=cfg.time_freq_shift)
        emb = self.time_mlp(sinusoid)
        if context is not None:
            if not self.config.cross_attention_resolutions:
                raise DdpmkitError("a context was given to a UNet without cross-attention; "
                                   "set cross_attention_resolutions in UNetConfig")
            if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.config.resolved_context_dim:
                raise DdpmkitError(f"context must have shape ({batch}, L, {self.config.resolved_context_dim}), "
                                   f"got {tuple(context.shape)}")
        label_modules = [m for m in (self.label_emb, self.label_tokens) if m is not None]
        if label_modules:
            resolved = label_modules[0].resolve(labels, batch, device)  # one dropout draw for both uses
            if self.label_emb is not None:
                emb = emb + self.label_emb.lookup(resolved)
            if self.label_tokens is not None:
                tokens = self.label_tokens.lookup(resolved)
                context = tokens if context is None else torch.cat([tokens, context.to(tokens.dtype)], dim=1)
        elif labels is not None:
            raise DdpmkitError("labels were given to an unconditional UNet; set num_classes in UNetConfig")
        return emb, context

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """Predict from noisy ``x`` (B, C, H, W) at timesteps ``t`` (B,), int or float, and ``labels`` (B,).

        ``labels=None`` on a class-conditional model uses the null class for every sample. ``context`` (B, L, D)
        is any token sequence for the cross-attention blocks (see the module docstring).
        """
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise DdpmkitError(
                f"UNet expects input of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        B, _, H, W = x.shape
        t = torch.as_tensor(t)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != B):
            raise DdpmkitError(f"timesteps t must have shape ({B},) or be a scalar, got {tuple(t.shape)}")
        emb, context = self._condition(t, labels, context, B, x.device)
        emb = F.silu(emb)  # every ResBlock's emb_proj input, SiLU'd once

        m = 2 ** (len(self.config.channel_mults) - 1)
        pad_h, pad_w = -H % m, -W % m
        if pad_h or pad_w:  # centred zero padding to a multiple of 2**(levels-1); cropped again below
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        if self.config.channels_last:
            # .to, not .contiguous: a 1-channel (B, 1, H, W) tensor already counts as channels_last-contiguous,
            # so .contiguous(channels_last) keeps NCHW strides and every conv after it stays NCHW (MNIST ran
            # NCHW that way); .to() always writes NHWC strides (stride 1 on C), which the convs then propagate
            x = x.to(memory_format=torch.channels_last)

        h = self.conv_in(x)
        hs = [h]
        for stage in self.down:
            h = stage(h, emb, context)
            hs.append(h)
        h = self.mid(h, emb, context)
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb, context)
        h = self.conv_out(self.norm_out(h))

        if pad_h or pad_w:
            h = h[:, :, pad_h // 2 : pad_h // 2 + H, pad_w // 2 : pad_w // 2 + W]
        return h
