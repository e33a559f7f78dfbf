"""Reference feature statistics of a real data set, computed once and cached as .npz.

A ``ReferenceStats`` holds what a score needs and what it must be reported with: mean and covariance
(float64, for FID), the features themselves (float32, for KID, which has no sufficient statistic), N,
the feature extractor's id and its resize method. Cache files live in ``<cache>/reference/`` and are
read with ``np.load(allow_pickle=False)``; a file whose extractor id or resize differs from the
extractor in use is recomputed, never mixed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..errors import DdpmkitError
from ..fetch import cache_dir, check_recorded_sha256, record_sha256
from .features import FeatureExtractor
from .fid import frechet_distance, gaussian_stats
from .kid import KIDResult, kid


@dataclass
class ReferenceStats:
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    n: int
    extractor: str
    resize: str
    source: str = ""  # e.g. "mnist:test"

    @classmethod
    def from_features(
        cls, features: np.ndarray, extractor: str, resize: str, source: str = ""
    ) -> ReferenceStats:
        mu, sigma = gaussian_stats(features)
        return cls(mu, sigma, np.asarray(features, np.float32), len(features), extractor, resize, source)

    def save(self, path: str | Path) -> Path:
        """Write atomically as .npz (arrays and strings only, no pickle)."""
        path = Path(path)
        with atomic_file(path) as handle:
            np.savez(
                handle,
                mu=self.mu,
                sigma=self.sigma,
                features=self.features,
                n=np.int64(self.n),
                extractor=np.str_(self.extractor),
                resize=np.str_(self.resize),
                source=np.str_(self.source),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                mu=data["mu"],
                sigma=data["sigma"],
                features=data["features"],
                n=int(data["n"]),
                extractor=str(data["extractor"]),
                resize=str(data["resize"]),
                source=str(data["source"]),
            )

    def check_compatible(self, extractor: FeatureExtractor) -> None:
        if (self.extractor, self.resize) != (extractor.id, extractor.resize):
            raise DdpmkitError(
                f"reference statistics {self.source!r} were made with {self.extractor} / {self.resize}, "
                f"not {extractor.id} / {extractor.resize}; recompute them with the same extractor"
            )

    def fid(self, features: np.ndarray) -> float:
        """Fréchet distance of a feature set to this reference."""
        return frechet_distance(*gaussian_stats(features), self.mu, self.sigma)

    def kid(self, features: np.ndarray, **kwargs) -> KIDResult:
        return kid(features, self.features, **kwargs)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def reference_path(
    spec: str, split: str, extractor: FeatureExtractor, num: int | None, image_size: int | None
) -> Path:
    """Cache file name: one per data set, split, extractor, resize, image size and N."""
    parts = [spec, split, extractor.id, extractor.resize, f"s{image_size or 'native'}", f"n{num or 'all'}"]
    return cache_dir() / "reference" / (_slug("__".join(parts)) + ".npz")


def stats_for_images(
    images: np.ndarray, extractor: FeatureExtractor, source: str = "", progress: bool = True
) -> ReferenceStats:
    return ReferenceStats.from_features(
        extractor(images, progress=progress), extractor.id, extractor.resize, source
    )


def reference_stats(
    spec: str,
    extractor: FeatureExtractor,
    *,
    split: str = "train",
    num: int | None = None,
    image_size: int | None = None,
    progress: bool = True,
    loader: Callable | None = None,
) -> ReferenceStats:
    """Statistics of the first ``num`` images (all when None) of ``spec``/``split``, cached.

    ``loader(spec, split=..., image_size=...)`` defaults to ``ddpmkit.data.load_dataset``.
    """
    path = reference_path(spec, split, extractor, num, image_size)
    if path.is_file():  # checked against the sha256 recorded when it was cached
        check_recorded_sha256(path, "run the command again (the statistics are computed again)")
        stats = ReferenceStats.load(path)
        if (stats.extractor, stats.resize) == (extractor.id, extractor.resize):
            return stats
    if loader is None:
        from ..data import load_dataset as loader
    data = loader(spec, split=split, image_size=image_size)
    images = data.images if num is None else data.images[:num]
    if num is not None and len(images) < num:
        raise DdpmkitError(f"{spec}:{split} has {len(images)} images, fewer than the {num} requested")
    stats = stats_for_images(images, extractor, source=f"{spec}:{split}", progress=progress)
    stats.save(path)
    record_sha256(path)
    return stats


def reference_split(spec: str, split: str = "test", progress: bool = True) -> str:
    """``split`` if ``spec`` has it, else "train" (pokemon, emoji, digits and folders ship one set of images).

    Decided from the data registry (``ddpmkit.data.available_splits``): nothing is loaded.
    """
    from ..data import available_splits

    if split in available_splits(spec):
        return split
    if progress:
        print(f"note: {spec} has no {split} split; its train images are the reference", file=sys.stderr)
    return "train"


def reference_stats_with_fallback(
    spec: str,
    extractor: FeatureExtractor,
    *,
    split: str = "test",
    num: int | None = None,
    image_size: int | None = None,
    progress: bool = True,
    loader: Callable | None = None,
) -> ReferenceStats:
    """``reference_stats`` on ``reference_split(spec, split)``: "train" when the data set has no ``split``.

    Only a missing split falls back; any other problem (e.g. fewer images than ``num``) is reported as is.
    """
    return reference_stats(spec, extractor, split=reference_split(spec, split, progress), num=num,
                           image_size=image_size, progress=progress, loader=loader)
