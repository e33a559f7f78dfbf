"""The in-memory data set (`ImageArray`) and the image conversions every source shares.

Conventions: images are uint8 arrays (N, H, W, C) with C = 1 (grayscale) or 3 (RGB); labels are int64 (N,).
Transparency is composited on white; non-square images are padded (artwork on white) or center-cropped
(photos); resizing uses Pillow with an antialiasing filter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..errors import DdpmkitError

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})

# uint8 p -> float32 p / 127.5 - 1 (0 -> -1, 255 -> 1), computed in float32 as the division would be: a table, so
# that training, the likelihood and the demo see the same values
TO_MODEL_RANGE = np.arange(256, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]: x / 127.5 - 1."""
    return torch.from_numpy(TO_MODEL_RANGE[np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2))])


@dataclass
class ImageArray:
    """A whole data set in memory: uint8 images (N, H, W, C) and int64 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise DdpmkitError(
                f"images must be uint8 (N, H, W, C) with C = 1 or 3, "
                f"got {self.images.dtype} {self.images.shape}"
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.images),):
            raise DdpmkitError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")

    def label_kwargs(self, index: np.ndarray | slice) -> dict[str, torch.Tensor]:
        """The model keyword arguments of the images at ``index``: ``{"labels": int64 (B,)}``."""
        return {"labels": torch.from_numpy(np.ascontiguousarray(self.labels[index], dtype=np.int64))}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 for an unlabelled set."""
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Side of the (square) images."""
        height, width = self.images.shape[1:3]
        if height != width:
            raise DdpmkitError(f"{self.name}: images are {height}x{width}, not square; resize them first")
        return int(height)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def resized(self, size: int, progress: bool = False) -> ImageArray:
        """The same set with every image resized to ``size`` x ``size`` (a no-op at the native size)."""
        if self.images.shape[1:3] == (size, size):
            return self
        return ImageArray(resize_images(self.images, size, progress=progress, what=self.name),
                          self.labels, list(self.class_names), self.name)


def to_rgb_or_gray(img: Image.Image, keep_gray: bool) -> Image.Image:
    """Mode 'L' (if ``keep_gray`` and the image is grayscale) or 'RGB'; transparency composited on white.

    Grayscale means one of GRAY_MODES; a palette image counts as colour. Compositing on white:
    out = alpha * pixel + (1 - alpha) * 255 (Pillow's alpha_composite over an opaque white background).
    """
    gray = img.mode in GRAY_MODES
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0  # 16-bit PNGs span 0..65535
        img = Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")  # a palette or an 'L' image may carry transparency too
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("L" if keep_gray and gray else "RGB")


def pad_square(img: Image.Image, fill: int | tuple[int, ...] = 255) -> Image.Image:
    """Pad the shorter side symmetrically (white by default) so the image becomes square."""
    width, height = img.size
    side = max(width, height)
    if width == height:
        return img
    if img.mode == "RGB" and isinstance(fill, int):
        fill = (fill, fill, fill)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - width) // 2, (side - height) // 2))
    return out


def center_crop_square(img: Image.Image) -> Image.Image:
    """Crop the central square whose side is the shorter side."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return img.crop((left, top, left + side, top + side))


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize to size x size: Lanczos to shrink (Pillow's antialiasing filter), bicubic to enlarge."""
    if img.size == (size, size):
        return img
    shrink = size < min(img.size)
    return img.resize((size, size), Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC)


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image in mode L or RGB as uint8 (H, W, C)."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def resize_images(images: np.ndarray, size: int, progress: bool = False, what: str = "") -> np.ndarray:
    """Resize a uint8 (N, H, W, C) stack to (N, size, size, C) image by image with Pillow."""
    if size < 1:
        raise DdpmkitError(f"image_size must be a positive integer, got {size}")
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for i, img in enumerate(_progress(images, progress, f"resizing {what} to {size}px")):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = pil_to_array(resize_square(pil, size))
    return out


def _progress(items: Iterable, enabled: bool, desc: str, total: int | None = None, unit: str = "img"):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, leave=False)
