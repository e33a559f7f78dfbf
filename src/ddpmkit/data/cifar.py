"""CIFAR-10, python version: ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py`` folder.

Each batch is a pickle (Python 2, protocol 2) of a dict {b"data": uint8 (N, 3072) rows of R, G, B planes
of 32x32, b"labels": [int], ...}; batches.meta holds b"label_names". They are read with the restricted
unpickler (plain containers and numpy arrays only), never with ``pickle.load``.
Format: https://www.cs.toronto.edu/~kriz/cifar.html
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from ..errors import DdpmkitError
from .image_array import ImageArray
from .safe_pickle import safe_loads

SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
FOLDER = "cifar-10-batches-py"


def _read_members(root: Path, names: list[str]) -> dict[str, bytes]:
    """The named batch files from the tarball (one pass) or folder; DdpmkitError unless CIFAR-10."""
    hint = f"cifar10:PATH expects cifar-10-python.tar.gz or a {FOLDER} folder"
    if not root.exists():
        raise DdpmkitError(f"{root} does not exist; {hint}")
    if root.is_dir():
        folder = root / FOLDER if (root / FOLDER).is_dir() else root
        found = {name: (folder / name).read_bytes() for name in names if (folder / name).is_file()}
    elif tarfile.is_tarfile(root):
        found = {}
        with tarfile.open(root) as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and Path(member.name).parent.name == FOLDER and name in names:
                    found[name] = tar.extractfile(member).read()
    else:
        raise DdpmkitError(f"{root} is neither a folder nor a tar archive; {hint}")
    if "batches.meta" not in found:
        raise DdpmkitError(f"{root} holds no {FOLDER}/batches.meta; {hint}")
    missing = [name for name in names if name not in found]
    if missing:
        raise DdpmkitError(f"{root} lacks the CIFAR-10 batch(es) {', '.join(missing)}")
    return found


def _batch(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_loads(blob, encoding="bytes")
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, KeyError, IndexError) as exc:
        raise DdpmkitError(f"CIFAR-10 {name} lacks b'data'/b'labels': not a CIFAR-10 batch") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DdpmkitError(f"CIFAR-10 {name}: data {data.shape}, labels {labels.shape}; "
                           f"expected (N, 3072), (N,)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels  # channel planes -> HWC


def load_cifar10(path: str | Path, split: str = "train") -> ImageArray:
    """Read a CIFAR-10 split (train: data_batch_1..5, test: test_batch) as 32x32x3 uint8."""
    root = Path(path).expanduser()
    if split not in SPLITS:
        raise DdpmkitError(f"unknown split {split!r} for CIFAR-10; use 'train' or 'test'")
    blobs = _read_members(root, ["batches.meta", *SPLITS[split]])
    meta = safe_loads(blobs["batches.meta"], encoding="bytes")
    try:
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    except (TypeError, KeyError) as exc:
        raise DdpmkitError(f"{root}: batches.meta has no b'label_names'; not CIFAR-10") from exc
    parts = [_batch(blobs[name], name) for name in SPLITS[split]]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return ImageArray(images, np.concatenate([p[1] for p in parts]), class_names, f"cifar10:{root}")
