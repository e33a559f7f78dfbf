"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a folder (in a run: ``checkpoints/step_0001234/``; :mod:`ddpmkit.run` finds it) holding

    model.safetensors       the trained weights
    ema.safetensors         the EMA weights (used for all sampling)
    optimizer.safetensors   the optimizer's per-parameter state tensors
    rng.safetensors         torch RNG states (global CPU, CUDA, and the trainer's generator)
    state.json              the run's metadata (:class:`ddpmkit.run.RunInfo`: model, diffusion and run configs, data,
                            versions) and the training state (step, epoch, loader position, optimizer settings)

It is written into a temporary folder beside the final one, every file fsynced, then renamed into place in one
step: a crash, a SIGKILL or a full disk leaves the previous checkpoints untouched and at worst a ``.tmp-*``
folder that loading ignores. Nothing is unpickled: safetensors holds raw tensors, JSON the rest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import fsync_dir
from .errors import DdpmkitError

FORMAT = "ddpmkit-checkpoint-v1"


def tensor_file(checkpoint: Path, name: str) -> Path:
    """The safetensors file of one group ("model", "ema", "optimizer", "rng", …) in a checkpoint folder."""
    return Path(checkpoint) / f"{name}.safetensors"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-safe hyper-parameters."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_checkpoint(final: Path, tensors: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> Path:
    """Write the checkpoint folder ``final`` atomically (a temporary sibling, fsynced, renamed into place)."""
    final = Path(final)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        for name, group in tensors.items():
            _save_tensors(group, tensor_file(tmp, name))
        payload = json.dumps({"format": FORMAT, **state}, indent=1)
        with open(tmp / "state.json", "w") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(tmp)
        old = None
        if final.exists():  # re-saving a step: move the old copy aside first, so one copy always exists
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:  # a full disk, a quota, a read-only or vanished folder: the last checkpoint is intact
        shutil.rmtree(tmp, ignore_errors=True)
        raise DdpmkitError(f"cannot write checkpoint {final} ({exc.strerror or exc}); nothing was replaced and the "
                           "previous checkpoints are intact: free some space (or fix the folder) and continue with "
                           "--resume") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint folder's state.json, checked to be ours."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DdpmkitError(f"{path} is not a readable checkpoint (state.json: {exc}); use an earlier one") from exc
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found != FORMAT:
        raise DdpmkitError(f"{path} is not a ddpmkit checkpoint (format {found!r}, want {FORMAT})")
    return state


TRAINING_FILES = ("model", "ema", "optimizer", "rng")


def weights_error(exc: RuntimeError, where: str | Path) -> DdpmkitError | None:
    """``load_state_dict``'s page-long error (one line per tensor) as one line: the first missing, unexpected or
    differently shaped tensor and how many more differ. None when ``exc`` is not such an error."""
    text = str(exc)
    if not text.startswith("Error(s) in loading state_dict"):
        return None
    problems = []
    for line in text.splitlines()[1:]:
        line = line.strip()
        if line.startswith("size mismatch for"):
            name = line[len("size mismatch for "):].split(":", 1)[0]
            shapes = re.findall(r"torch\.Size\((\[[^\]]*\])\)", line)
            problems.append(f"{name} is {shapes[0]} there but {shapes[1]} in the model" if len(shapes) == 2
                            else f"{name} has another shape")
        for kind, said in (("Missing key(s)", "is missing"), ("Unexpected key(s)", "is not in the model")):
            if line.startswith(kind):
                problems += [f"{name} {said}" for name in re.findall(r'"([^"]+)"', line)]
    first = problems[0] if problems else " ".join(text.splitlines()[1:2]).strip() or "they differ"
    more = f", and {len(problems) - 1} more tensors differ" if len(problems) > 1 else ""
    return DdpmkitError(f"the weights in {where} do not fit the model its state.json describes ({first}{more}); "
                        "they come from another model (another size?): use a checkpoint of this run")


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str | Path) -> None:
    """``model.load_state_dict(tensors)``, with a mismatch as one line (:func:`weights_error`)."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        error = weights_error(exc, where)
        if error is None:
            raise
        raise error from None


def load_checkpoint(path: Path, names: tuple[str, ...] | None = None,
                    required: tuple[str, ...] = ()) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read one checkpoint folder (``RunFolder.locate`` finds it in a run): ({'model': …, 'ema': …, …}, state).

    Truncated or foreign files are refused with a one-line error.

    ``names`` limits which safetensors files are read (sampling needs only "ema"); ``required`` lists files that
    must be present (resuming needs all of TRAINING_FILES).
    """
    path = Path(path)
    state = read_state(path)
    missing = [name for name in required if not tensor_file(path, name).is_file()]
    if missing:
        raise DdpmkitError(f"{path} lacks {', '.join(m + '.safetensors' for m in missing)}; "
                           "resume from a complete checkpoint")
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        if names is not None and file.stem not in names:
            continue
        try:
            tensors[file.stem] = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DdpmkitError(f"{file} is truncated or corrupt ({exc}); resume from an earlier checkpoint") from exc
    if "model" not in tensors and "ema" not in tensors:
        raise DdpmkitError(f"{path} holds no model weights (model.safetensors / ema.safetensors)")
    return tensors, state
