"""Any folder of images as an ImageArray (``folder:PATH``).

Rules (documented in the README as well):
- Files are found recursively; a file counts as an image by its extension (IMAGE_EXTENSIONS).
- Labels: each sub-folder of PATH that holds images (at any depth) is a class; classes are the sorted
  sub-folder names. With no such sub-folder the set is unlabelled (labels 0, class_names []). Images
  directly in PATH next to class sub-folders are skipped with a warning.
- Modes: transparency is composited on white; L/P/CMYK/... become RGB, except that when ALL images are
  grayscale the set keeps 1 channel.
- Shape: non-square images are center-cropped to their shorter side. Without ``image_size`` the set takes
  the most common (cropped) side, ties going to the smallest, and resizes the others to it.
- Unreadable files (corrupt, truncated, or above Pillow's pixel limit for untrusted images) are skipped and listed in
  one warning; if none is readable -> DdpmkitError naming why the first one is not.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DdpmkitError, DdpmkitWarning
from .image_array import (
    GRAY_MODES,
    ImageArray,
    _progress,
    center_crop_square,
    pil_to_array,
    resize_square,
    to_rgb_or_gray,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                              ".pgm", ".pbm"})
_BAD = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _why(exc: Exception) -> str:
    """Why a file cannot be read, in a few words."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels, " if found else ""
        return (f"{pixels}above the {Image.MAX_IMAGE_PIXELS or 0:,} pixels Pillow opens from an untrusted file: "
                "shrink it or move it out of the folder")
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    return " ".join(str(exc).split()) or type(exc).__name__


def _unreadable(root: Path, total: int, bad: list[tuple[str, str]]) -> DdpmkitError:
    name, why = bad[0]
    more = f" ({len(bad) - 1} more alike)" if len(bad) > 1 else ""
    return DdpmkitError(f"none of the {total} image files under {root} is readable: {name}: {why}{more}")


def _scan(root: Path) -> tuple[list[Path], list[int], list[str]]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DdpmkitError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    top = [p for p in files if p.parent == root]
    nested = [p for p in files if p.parent != root]
    if not nested:
        return top, [0] * len(top), []
    if top:
        warnings.warn(f"{root}: {len(top)} image(s) directly in the folder are skipped because its "
                      f"sub-folders are classes (e.g. {top[0].name})", DdpmkitWarning, stacklevel=3)
    class_names = sorted({p.relative_to(root).parts[0] for p in nested})
    return nested, [class_names.index(p.relative_to(root).parts[0]) for p in nested], class_names


def load_folder(path: str | Path, image_size: int | None = None, progress: bool = True) -> ImageArray:
    """Load every image under ``path`` (see the module docstring for labels, modes and sizes)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DdpmkitError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DdpmkitError(f"{root} is not a folder (folder:PATH expects a folder of images)")
    files, labels, class_names = _scan(root)

    # Pass 1: headers only (cheap) -> modes and sizes, and files that are not images at all.
    bad: list[tuple[str, str]] = []  # (file, why)
    headers: list[tuple[Path, int, str, int]] = []
    for file, label in zip(files, labels):
        try:
            with warnings.catch_warnings():  # Pillow warns above MAX_IMAGE_PIXELS, refuses above twice that
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(file) as img:
                    headers.append((file, label, img.mode, min(img.size)))
        except (Image.DecompressionBombWarning, *_BAD) as exc:
            bad.append((str(file.relative_to(root)), _why(exc)))
    if not headers:
        raise _unreadable(root, len(files), bad)
    keep_gray = all(mode in GRAY_MODES for _, _, mode, _ in headers)
    if image_size is None:
        counts = Counter(side for *_, side in headers)
        image_size = min(counts, key=lambda side: (-counts[side], side))

    # Pass 2: decode, convert, crop, resize.
    images, kept = [], []
    for file, label, _, _ in _progress(headers, progress, f"loading {root.name}"):
        try:
            with Image.open(file) as img:
                img.load()
                square = center_crop_square(to_rgb_or_gray(img, keep_gray))
        except _BAD as exc:
            bad.append((str(file.relative_to(root)), _why(exc)))
            continue
        images.append(pil_to_array(resize_square(square, image_size)))
        kept.append(label)
    if not images:
        raise _unreadable(root, len(files), bad)
    if bad:
        warnings.warn(f"{root}: skipped {len(bad)} unreadable image file(s): "
                      f"{', '.join(f'{name} ({why})' for name, why in sorted(bad))}", DdpmkitWarning, stacklevel=2)
    return ImageArray(np.stack(images), np.array(kept, dtype=np.int64), class_names, f"folder:{root}")
