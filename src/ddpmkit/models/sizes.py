"""Named UNet sizes: ``unet_sizes/<name>.yaml`` beside this module, each a mapping of :class:`UNetConfig` fields.

``UNetConfig.named(name)`` and a run preset's ``model.size`` read them; each file's comments say where its numbers
come from.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from ..errors import DdpmkitError

__all__ = ["list_unet_sizes", "load_unet_size"]


def _folder():
    return resources.files(__package__) / "unet_sizes"


def list_unet_sizes() -> list[str]:
    """Names of the UNet sizes: ``cifar10``, ``mnist``, ``pokemon64``, ``tiny``, …"""
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".yaml"))


def load_unet_size(name: str) -> dict[str, Any]:
    """The :class:`~ddpmkit.models.UNetConfig` fields of a named UNet size (lists where the config has tuples)."""
    sizes = list_unet_sizes()
    if name not in sizes:
        raise DdpmkitError(f"unknown UNet size {name!r}; choose one of {sizes}")
    spec = yaml.safe_load((_folder() / f"{name}.yaml").read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise DdpmkitError(f"UNet size file unet_sizes/{name}.yaml is not a mapping of UNetConfig fields")
    return spec
