"""``ddpmkit eval npz``: the FID of saved samples (an .npz from ``ddpmkit sample --npz``) against a named data set's
training images, with the floor at the same N.

Procedure. The training images of the data set are split by a fixed permutation (``numpy.random.default_rng(seed)``,
seed 0) into two disjoint halves A and B of floor(M / 2) images each; with ``num`` given, the first ``num`` of each
half are kept. With N = |B|, and mu, S the mean and covariance of the feature vectors of a set,

    FID(X, Y) = ||mu_X - mu_Y||^2 + tr(S_X + S_Y - 2 (S_X S_Y)^{1/2})        (Heusel et al. 2017, eq. 6)

three numbers are reported, every one between two sets of exactly N images:

    fid           = FID(generated[:N], B)   the score of the samples;
    floor         = FID(A, B)               what real images of the data set score against B at this N;
    fid_against_A = FID(generated[:N], A)   the score against the other half (a check on the split).

FID is biased upward at small N, so it is the gap to the floor, not the absolute value, that says how far the
samples are from the data; compare FIDs only at the same N and features. The training set is used because some
sets (Pokémon, emoji) have no test split; the halves make the floor a real-vs-real number at the samples' N.

The features are Inception pool3 (2048-d, the pinned TF weights; ``ddpmkit eval fetch``) or, for MNIST-like data,
the pinned MNIST classifier's 128-d features (``features="classifier"``). The images may come from anywhere (a GPU
machine, say); the features are computed where this runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DdpmkitError
from .features import FeatureExtractor
from .fid import fid_from_features
from .images import as_uint8_nhwc

FEATURES = ("inception", "classifier")


@dataclass
class NpzFid:
    """The FID of saved samples and its floor (see the module docstring); every number is at N = ``n``."""

    data: str
    samples: str
    label: str
    n: int
    fid: float
    floor: float
    fid_against_A: float  # the JSON key of earlier results; A is the name of the half
    extractor: str
    protocol: str
    seconds: float

    def line(self) -> str:
        return (f"{self.data}: FID {self.fid:.2f} (against the other half: {self.fid_against_A:.2f}) at N = {self.n}; "
                f"floor (real half A vs half B) {self.floor:.2f}")

    def write(self, path: str | Path) -> Path:
        from ..atomic import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(asdict(self), indent=1) + "\n")
        return path


def halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of floor(n / 2) images each, from a fixed permutation of range(n)."""
    order = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return order[:half], order[half:2 * half]


def load_npz_images(path: str | Path) -> np.ndarray:
    """The uint8 (N, H, W, C) array 'images' of an .npz (what ``ddpmkit sample --npz`` writes)."""
    path = Path(path)
    if not path.is_file():
        raise DdpmkitError(f"{path} does not exist; write samples with `ddpmkit sample RUN --npz {path.name}`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise DdpmkitError(f"{path} holds {', '.join(npz.files) or 'no arrays'}, not 'images'; "
                                   "save the samples as images=uint8 (N, H, W, C) (`ddpmkit sample --npz`)")
            images = npz["images"]
    except (OSError, ValueError) as exc:
        raise DdpmkitError(f"{path} is not a readable .npz ({exc}); write it with `ddpmkit sample --npz`") from None
    if images.dtype != np.uint8:
        raise DdpmkitError(f"{path}: 'images' is {images.dtype}, expected uint8 (N, H, W, C) in 0..255")
    return as_uint8_nhwc(images)


def make_extractor(features: str = "inception", *, inception_path: str | Path | None = None,
                   device: str = "cpu") -> FeatureExtractor:
    """The pinned Inception network or the pinned MNIST classifier, as a feature extractor."""
    if features == "inception":
        from .inception import InceptionFeatures

        return InceptionFeatures(inception_path, device=device)
    if features == "classifier":
        if inception_path is not None:
            raise DdpmkitError("--inception applies to --features inception only; drop one of them")
        from .classifier import MnistClassifier

        return MnistClassifier(device=device)
    raise DdpmkitError(f"unknown features {features!r}; choose from {', '.join(FEATURES)}")


def fid_of_npz(
    samples: str | Path | Sequence[str | Path] | np.ndarray,
    data: str,
    *,
    num: int | None = None,
    extractor: FeatureExtractor | str = "inception",
    label: str = "",
    seed: int = 0,
    progress: bool = True,
) -> NpzFid:
    """FID of ``samples`` (an .npz path, several read in order as one set, or a uint8 NHWC array) against half B
    of ``data``'s training images, with the floor FID(A, B) and FID(samples, A), all at N = |B| (or ``num``, when
    given and smaller); see the module docstring.

    ``extractor``: a feature extractor, or the name of one of ``FEATURES`` (made on the CPU once the inputs are
    checked; default: the pinned Inception network).
    """
    from ..data import load_dataset

    if isinstance(samples, (str, Path)):
        source, generated = str(samples), load_npz_images(samples)
    elif isinstance(samples, (list, tuple)):
        parts = [load_npz_images(path) for path in samples]
        if len({part.shape[1:] for part in parts}) > 1:
            raise DdpmkitError(f"the .npz files hold images of different shapes ({', '.join(map(str, samples))}); "
                               "pass the parts of one set of samples")
        source, generated = ", ".join(str(path) for path in samples), np.concatenate(parts)
    else:
        source, generated = "(array)", as_uint8_nhwc(samples)
    if num is not None and num < 2:
        raise DdpmkitError(f"--num must be at least 2 (a covariance needs two images), got {num}")
    real = load_dataset(data, "train", None, progress=False).images
    height, width = generated.shape[1:3]
    if (height, width) != real.shape[1:3] and height == width:  # a model trained with --image-size
        real = load_dataset(data, "train", height, progress=False).images
    if generated.shape[1:] != real.shape[1:]:
        raise DdpmkitError(f"the samples are {generated.shape[1:]} (H, W, C) but {data}'s images are "
                           f"{real.shape[1:]}; score samples against the data set the model was trained on")
    a, b = halves(len(real), seed)
    trimmed = num is not None and num < len(b)
    if trimmed:
        a, b = a[:num], b[:num]
    n = len(b)
    if len(generated) < n:
        hint = f"generate at least {n}" + ("" if num is not None else " or pass --num")
        raise DdpmkitError(f"{source} holds {len(generated)} images; this score needs {n}; {hint}")
    if isinstance(extractor, str):
        extractor = make_extractor(extractor)
    start = time.perf_counter()
    feats = {name: extractor(images, progress=progress)
             for name, images in (("generated", generated[:n]), ("A", real[a]), ("B", real[b]))}
    return NpzFid(
        data=data, samples=source, label=label, n=n,
        fid=fid_from_features(feats["generated"], feats["B"]),
        floor=fid_from_features(feats["A"], feats["B"]),
        fid_against_A=fid_from_features(feats["generated"], feats["A"]),
        extractor=getattr(extractor, "id", type(extractor).__name__),
        protocol=f"generated[:N] vs training half B; floor: half A vs half B; halves from numpy "
                 f"default_rng({seed}).permutation" + (f", first {num} of each" if trimmed else ""),
        seconds=round(time.perf_counter() - start, 1),
    )
