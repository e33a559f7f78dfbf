"""Run presets shipped with the package: ``<name>.yaml`` in this folder, each a :class:`~ddpmkit.config.RunConfig`
(:func:`list_presets`, :func:`load_preset`). Each file's comments say where its numbers come from; the UNet sizes a
preset names (``model.size``) live with the model (:mod:`ddpmkit.models.sizes`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..config import RunConfig, yaml_problem
from ..errors import DdpmkitError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; only for annotations

__all__ = ["list_presets", "load_preset"]


def _folder() -> Traversable:
    return resources.files(__name__)


def list_presets() -> list[str]:
    """Names of the run presets (``presets/*.yaml``)."""
    return sorted(p.name[:-5] for p in _folder().iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> RunConfig:
    """A run preset by name (``mnist``, ``pokemon64``, …) or a path to a YAML file."""
    path = Path(name)
    if name.endswith((".yaml", ".yml")) or path.exists():
        if not path.exists():
            raise DdpmkitError(f"preset file {name} does not exist")
        return RunConfig.load(path)
    presets = list_presets()
    if name not in presets:
        raise DdpmkitError(f"unknown preset '{name}'; choose one of {', '.join(presets)} or pass a YAML file")
    text = (_folder() / f"{name}.yaml").read_text(encoding="utf-8")
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DdpmkitError(f"preset {name} is not valid YAML ({yaml_problem(exc)}); reinstall ddpmkit") from None
    return RunConfig.from_dict(spec, where=f"preset {name}")
