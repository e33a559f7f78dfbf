"""Adapters on a UNet: choose the target layers, inject LoRA wrappers, merge and unmerge, fingerprint the base,
and save or load the adapter (``adapter.safetensors`` + ``adapter.json``).

Every targeted layer ``W`` becomes ``W + s·(α/r)·B·A`` (see :mod:`.layers`). Target groups, matched by module
name so that any block with these names is covered:

- ``attn``: the q, k, v and output projections (``to_q``, ``to_k``, ``to_v``, ``to_out``) of every self- and
  cross-attention block;
- ``conv``: every ``nn.Conv2d`` inside the network (ResBlock convs and skip convs, down/upsampling convs), but not
  the image-facing ``conv_in``/``conv_out``, whose width is the image's 1 or 3 channels;
- ``mlp``: the Linears of the time MLP (``time_mlp``) and every ResBlock's ``emb_proj``. Label embeddings are
  ``nn.Embedding`` tables and are not adapted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import DdpmkitError
from .layers import LoRAConv2d, LoRALayer, LoRALinear, describe, layer_width

ATTENTION_NAMES = frozenset({"to_q", "to_k", "to_v", "to_out"})
MLP_NAMES = frozenset({"time_mlp", "emb_proj"})
IMAGE_CONVS = frozenset({"conv_in", "conv_out"})
TARGETS = ("attn", "conv", "mlp")

ADAPTER_JSON, ADAPTER_WEIGHTS, FORMAT = "adapter.json", "adapter.safetensors", "ddpmkit-lora-v1"


def parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """``"attn,conv"`` or ``["attn", "conv"]`` -> ("attn", "conv"), checked against :data:`TARGETS`."""
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if str(t).strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise DdpmkitError(f"unknown LoRA target '{','.join(unknown) or targets}'; valid targets are "
                           f"{', '.join(TARGETS)} (comma-separated, e.g. attn,conv)")
    return tuple(dict.fromkeys(names))


def check_rank(rank: int) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise DdpmkitError(f"LoRA rank must be a positive integer (got {rank!r}); 4 to 16 is usual")


def _is_target(name: str, module: nn.Module, targets: tuple[str, ...]) -> bool:
    parts = set(name.split("."))
    if isinstance(module, nn.Linear):
        return ("attn" in targets and bool(parts & ATTENTION_NAMES)) or ("mlp" in targets and bool(parts & MLP_NAMES))
    return "conv" in targets and isinstance(module, nn.Conv2d) and name not in IMAGE_CONVS


def find_targets(model: nn.Module, targets: str | Iterable[str]) -> list[tuple[str, nn.Module]]:
    """The (name, layer) pairs of ``model`` that ``targets`` selects, in module order."""
    chosen = parse_targets(targets)
    return [(name, m) for name, m in model.named_modules() if _is_target(name, m, chosen)]


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALayer)}


def inject(model: nn.Module, rank: int, alpha: float, targets: str | Iterable[str]) -> list[str]:
    """Wrap every targeted layer in place as ``W + (α/r)·B·A`` (B = 0: the output is unchanged) and freeze all
    but the adapters. Returns the adapted layers' names. Refuses a rank above the narrowest layer's width."""
    check_rank(rank)
    chosen = parse_targets(targets)
    if lora_layers(model):
        raise DdpmkitError("the model already has LoRA adapters; merge them first (ddpmkit lora merge)")
    found = find_targets(model, chosen)
    if not found:
        raise DdpmkitError(f"no layer of this model is a LoRA target of {','.join(chosen)} (a UNet without "
                           "attention has no attn layers); choose from " + ", ".join(TARGETS))
    name, narrowest = min(found, key=lambda item: layer_width(item[1]))
    width = layer_width(narrowest)
    if rank > width:
        raise DdpmkitError(f"LoRA rank {rank} is above the width of {name} ({describe(narrowest)}: at most rank "
                           f"{width}); use --rank {width} or less")
    model.requires_grad_(False)
    for name, layer in found:
        parent_name, _, child = name.rpartition(".")
        wrapper = LoRALinear(layer, rank, alpha) if isinstance(layer, nn.Linear) else LoRAConv2d(layer, rank, alpha)
        setattr(model.get_submodule(parent_name), child, wrapper)
    return [name for name, _ in found]


def merge(model: nn.Module) -> None:
    """W ← W + s·(α/r)·B·A in every adapted layer (in place)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """W ← W − s·(α/r)·B·A in every adapted layer: the base weights again, up to float rounding."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def set_scale(model: nn.Module, scale: float) -> None:
    """The runtime strength s of every adapter (0: the base model, 1: as trained)."""
    layers = lora_layers(model)
    if not layers:
        raise DdpmkitError("a LoRA scale needs a model with adapters (pass --lora DIR)")
    for layer in layers.values():
        layer.set_scale(scale)


def strip(model: nn.Module) -> None:
    """Replace every adapter by a plain layer with its current weight (merge first to keep the adaptation)."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.to_base())


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter weights: ``NAME.lora_A`` and ``NAME.lora_B`` of every adapted layer."""
    return {f"{name}.{key}": getattr(layer, key).detach().cpu().contiguous()
            for name, layer in lora_layers(model).items() for key in ("lora_A", "lora_B")}


def load_lora_state_dict(model: nn.Module, tensors: dict[str, Tensor], where: str = "the adapter") -> None:
    """Copy adapter weights in; the names and shapes must be exactly the model's adapters'."""
    own = lora_state_dict(model)
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        odd = sorted(set(own) ^ set(tensors)) or [k for k in own if own[k].shape != tensors[k].shape]
        raise DdpmkitError(f"{where} does not fit this model's adapters (e.g. {odd[0]}); it was made for another "
                           "model or targets")
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.copy_(tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"{name}.lora_B"])


def fingerprint(unet_config: dict[str, Any], weights: dict[str, Tensor]) -> str:
    """sha256 over the UNet config (its JSON, keys sorted) and the base weights, by name in sorted order (name,
    dtype, shape, bytes of each); adapter entries are left out, so an adapted model hashes as its base.

    The config is normalised through :class:`UNetConfig` (fields added later take their defaults), and callers
    pass the weights as loaded into a UNet (:func:`model_fingerprint`), so a checkpoint in an older layout hashes
    the same however it is reached."""
    from ..models import UNetConfig

    canonical = UNetConfig.from_dict(dict(unet_config)).to_dict()
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode())
    for name in sorted(weights):
        if name.endswith((".lora_A", ".lora_B")):
            continue
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """:func:`fingerprint` of a UNet in memory (its config and its base weights)."""
    return fingerprint(model.config.to_dict(), model.state_dict())


def short(fp: str) -> str:
    return f"sha256:{fp[:12]}"


@dataclass
class AdapterInfo:
    """adapter.json: what the adapter is and which base it belongs to."""

    rank: int
    alpha: float
    targets: list[str]
    base_fingerprint: str
    base_checkpoint: str | None = None
    step: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    layers: int = 0
    parameters: int = 0
    format: str = FORMAT


def save_adapter(folder: Path, model: nn.Module, info: AdapterInfo) -> Path:
    """Write ``adapter.safetensors`` (the adapter weights only) and ``adapter.json`` into ``folder``, atomically."""
    tensors = lora_state_dict(model)
    info.layers, info.parameters = len(tensors) // 2, sum(t.numel() for t in tensors.values())
    folder = Path(folder)
    atomic_write_bytes(folder / ADAPTER_WEIGHTS, save(tensors, metadata={"format": FORMAT}))
    atomic_write_text(folder / ADAPTER_JSON, json.dumps(asdict(info), indent=1))
    return folder / ADAPTER_WEIGHTS


def load_adapter(folder: str | Path) -> tuple[AdapterInfo, dict[str, Tensor]]:
    """(adapter.json, adapter weights) of an adapter folder, with one-line errors for what is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DdpmkitError(f"LoRA adapter folder {folder} " + ("is a file, not a folder" if folder.exists()
                                                              else "does not exist"))
    if not (folder / ADAPTER_JSON).is_file():
        raise DdpmkitError(f"{folder} has no {ADAPTER_JSON}: an adapter folder is what `ddpmkit lora` writes "
                           f"({ADAPTER_JSON} + {ADAPTER_WEIGHTS})")
    try:
        spec = json.loads((folder / ADAPTER_JSON).read_text())
        info = AdapterInfo(**spec)
    except (OSError, ValueError, TypeError) as exc:
        raise DdpmkitError(f"{folder / ADAPTER_JSON} is not a ddpmkit adapter description ({exc})") from None
    if info.format != FORMAT:
        raise DdpmkitError(f"{folder / ADAPTER_JSON} has format {info.format!r}, want {FORMAT}")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        others = sorted(p.name for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl"))
        found = f" (found {', '.join(others)})" if others else ""
        raise DdpmkitError(f"{folder} has no {ADAPTER_WEIGHTS}{found}: adapter weights are read from safetensors "
                           "only, never from pickle")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DdpmkitError(f"{weights} is not a safetensors file ({exc}); adapter weights are read from "
                           "safetensors only, never from pickle") from None
    return info, tensors


def check_base(info: AdapterInfo, base_fingerprint: str, folder: Path, base_name: str) -> None:
    if info.base_fingerprint != base_fingerprint:
        raise DdpmkitError(f"adapter {folder} was made for base {short(info.base_fingerprint)} but {base_name} is "
                           f"{short(base_fingerprint)}; apply it to the base it was trained on "
                           f"({info.base_checkpoint or 'see its adapter.json'})")


def apply_adapter(model: nn.Module, folder: str | Path, scale: float = 1.0, base_fingerprint: str | None = None,
                  base_name: str = "this model") -> AdapterInfo:
    """Load the adapter in ``folder`` onto ``model`` (its base; checked by fingerprint) at strength ``scale``."""
    info, tensors = load_adapter(folder)
    check_base(info, base_fingerprint or model_fingerprint(model), Path(folder), base_name)
    inject(model, info.rank, info.alpha, info.targets)
    load_lora_state_dict(model, tensors, where=f"{Path(folder) / ADAPTER_WEIGHTS}")
    set_scale(model, scale)
    return info
