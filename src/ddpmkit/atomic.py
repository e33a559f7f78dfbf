"""Atomic file writes: a temporary file in the same folder, fsync, rename, fsync the folder.

A reader (or a crash, a kill, a full disk) sees either the old file or the complete new one, never a torn one.
Every file ddpmkit writes that something later reads back goes through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import DdpmkitError


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, verify: Callable[[Path], object] | None = None) -> Iterator[BinaryIO]:
    """``with atomic_file(p) as handle: handle.write(...)`` — ``p`` appears only once complete.

    ``verify(tmp_path)`` may check the written file (e.g. its sha256) before it is renamed into place.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; caches and pictures are ordinary files
        if verify is not None:
            verify(Path(tmp))
        os.replace(tmp, path)
    except OSError as exc:  # a full disk or a quota: the old file (if any) is untouched, the temporary one removed
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _write_error(path: Path, exc: OSError) -> DdpmkitError:
    return DdpmkitError(f"cannot write {path} ({exc.strerror or exc}); nothing was replaced: free some space (or fix "
                        "the folder) and run the command again")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(path: str | Path, kind: str = "file", flag: str = "--out") -> Path:
    """Fail before any work when ``path`` cannot be written; creates nothing.

    ``kind`` is "file" or "dir". Refused: a folder where a file should go (or a file where a folder should), a
    path under an existing file, or a location this user may not write.
    """
    path = Path(path)
    if path.exists():
        if kind == "file" and path.is_dir():
            raise DdpmkitError(f"{flag} {path} is a folder; pass a file name such as {path / 'grid.png'}")
        if kind == "dir" and not path.is_dir():
            raise DdpmkitError(f"{flag} {path} is a file, not a folder; pass a folder path")
    ancestor = path if kind == "dir" else path.parent
    ancestor = Path(os.path.abspath(ancestor))
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DdpmkitError(f"{flag} {path} cannot be written: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DdpmkitError(f"{flag} {path} cannot be written: {ancestor} is not writable; choose another path")
    return path
