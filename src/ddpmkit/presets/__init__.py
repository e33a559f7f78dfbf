"""Named configurations shipped with the package, all YAML files in this folder:

- run presets, ``<name>.yaml`` (a :class:`~ddpmkit.config.RunConfig`): :func:`list_presets`, :func:`load_preset`;
- UNet sizes, ``unet/<name>.yaml`` (:class:`~ddpmkit.models.UNetConfig` fields, used by ``UNetConfig.named`` and
  by a run preset's ``model.size``): :func:`list_unet_sizes`, :func:`load_unet_size`.

Each file's comments say where its numbers come from.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ddpmkit.errors import DdpmkitError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only for annotations

    from ddpmkit.config import RunConfig

__all__ = ["list_presets", "list_unet_sizes", "load_preset", "load_unet_size"]


def _folder(kind: str | None = None) -> Traversable:
    folder = resources.files(__name__)
    return folder / kind if kind else folder


def _names(folder: Traversable) -> list[str]:
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def list_presets() -> list[str]:
    """Names of the run presets (``presets/*.yaml``)."""
    return _names(_folder())


def load_preset(name: str) -> RunConfig:
    """A run preset by name (``mnist``, ``pokemon64``, …) or a path to a YAML file."""
    from ddpmkit.config import RunConfig  # ddpmkit.config re-exports this module's functions

    path = Path(name)
    if name.endswith((".yaml", ".yml")) or path.exists():
        if not path.exists():
            raise DdpmkitError(f"preset file {name} does not exist")
        return RunConfig.load(path)
    presets = list_presets()
    if name not in presets:
        raise DdpmkitError(f"unknown preset '{name}'; choose one of {', '.join(presets)} or pass a YAML file")
    text = (_folder() / f"{name}.yaml").read_text(encoding="utf-8")
    return RunConfig.from_dict(yaml.safe_load(text), where=f"preset {name}")


def list_unet_sizes() -> list[str]:
    """Names of the UNet sizes (``presets/unet/*.yaml``): ``cifar10``, ``mnist``, ``pokemon64``, ``tiny``."""
    return _names(_folder("unet"))


def load_unet_size(name: str) -> dict[str, Any]:
    """The :class:`~ddpmkit.models.UNetConfig` fields of a named UNet size (lists where the config has tuples)."""
    sizes = list_unet_sizes()
    if name not in sizes:
        raise DdpmkitError(f"unknown UNet size {name!r}; choose one of {sizes}")
    spec = yaml.safe_load((_folder("unet") / f"{name}.yaml").read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise DdpmkitError(f"UNet size file unet/{name}.yaml is not a mapping of UNetConfig fields")
    return spec
