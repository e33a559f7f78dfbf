"""A restricted unpickler for data files that are pickles (the MNIST and CIFAR-10 batches).

A pickle is a program: ``pickle.load`` will call any importable function the file names, e.g. ``os.system``.
``safe_loads`` admits only what plain containers and numpy arrays need — dict, list, tuple, bytes, str,
int, float, bool and None are built by opcodes without any import — and the few numpy callables that
rebuild an ndarray. Any other global raises ``DdpmkitError`` before it is imported or called.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from ..errors import DdpmkitError

try:  # numpy >= 2 moved numpy.core to numpy._core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_ALLOWED = {
    ("multiarray", "_reconstruct"): _multiarray._reconstruct,  # ndarray.__reduce__ (protocols 0-4)
    ("numeric", "_frombuffer"): _numeric._frombuffer,  # ndarray.__reduce_ex__ (protocol 5)
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): lambda text, encoding="utf-8": _latin1(text, encoding),  # bytes, protocols 0-2
}
_NUMPY_MODULES = {"numpy", "_codecs", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric"}


def _latin1(text: str, encoding: str) -> bytes:
    if encoding != "latin1":  # Python 3 pickles bytes as _codecs.encode(str, 'latin1') below protocol 3
        raise DdpmkitError(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits numpy array reconstruction and nothing else."""

    def find_class(self, module: str, name: str):
        key = (module.rsplit(".", 1)[-1], name)
        if module in _NUMPY_MODULES and key in _ALLOWED:
            return _ALLOWED[key]
        raise DdpmkitError(
            f"refusing to unpickle {module}.{name}: this file may only hold numpy arrays and plain "
            f"containers; it is not the expected data file (or it was tampered with)"
        )

    def persistent_load(self, pid):
        raise DdpmkitError("refusing to unpickle a persistent id: not a plain data pickle")


def safe_loads(data: bytes, encoding: str = "ASCII") -> object:
    """Unpickle ``data`` with ``RestrictedUnpickler`` (``encoding``: 'latin1', 'bytes'...)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except DdpmkitError:
        raise
    except Exception as exc:  # truncated or malformed
        raise DdpmkitError(f"cannot read pickle: {type(exc).__name__}: {exc}") from exc
