"""Image grids and denoising animations.

Model space is [-1, 1]; pixels are uint8 = round((x + 1) * 127.5) after clamping (the inverse of the
data scaling x = p / 127.5 - 1). Grids follow torchvision's make_grid layout: tile (r, c) of size H x W
starts at y = padding + r * (H + padding), x = padding + c * (W + padding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .atomic import atomic_file
from .errors import DdpmkitError


def to_uint8(x: Tensor | np.ndarray) -> np.ndarray:
    """Model space -> pixels, the one conversion in ddpmkit (grids, ``Pipeline.generate``, metrics).

    (B, C, H, W) or (C, H, W) floats in [-1, 1] (tensor or array) -> uint8 (B, H, W, C), in float32:

        u = round((clamp(x, -1, 1) + 1) * 127.5)        (round half to even: 0 -> 127.5 -> 128)
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"to_uint8 expects floats in [-1, 1], got {x.dtype}")
        x = np.asarray(x, dtype=np.float32)
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
    elif not x.is_floating_point():
        raise ValueError(f"to_uint8 expects floats in [-1, 1], got {x.dtype}")
    x = x.detach().float().cpu()
    if x.ndim == 3:
        x = x[None]
    pixels = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def _as_uint8_stack(images: np.ndarray | Tensor) -> np.ndarray:
    """Tensor (B, C, H, W) in [-1, 1] or uint8 array (B, H, W[, C]) -> uint8 (B, H, W, C)."""
    if isinstance(images, Tensor):
        return to_uint8(images)
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"numpy images must be uint8 (B, H, W, C), got {arr.dtype}; pass tensors in [-1, 1]")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be (B, H, W, C) with C in 1, 3, 4; got {arr.shape}")
    return arr


def make_grid(images: np.ndarray | Tensor, nrow: int | None = None, padding: int = 2,
              pad_value: int = 0) -> np.ndarray:
    """Tile B images into one uint8 (H', W', C) image with ``nrow`` images a row (default ceil(sqrt(B)))."""
    arr = _as_uint8_stack(images)
    count, height, width, channels = arr.shape
    ncol = max(1, min(nrow or math.ceil(math.sqrt(count)), count))
    nrows = math.ceil(count / ncol)
    grid = np.full((padding + nrows * (height + padding), padding + ncol * (width + padding), channels),
                   pad_value, dtype=np.uint8)
    for i in range(count):
        top = padding + (i // ncol) * (height + padding)
        left = padding + (i % ncol) * (width + padding)
        grid[top:top + height, left:left + width] = arr[i]
    return grid


def _default_scale(tile: int) -> int:
    return max(1, 96 // tile)  # 28 px -> 3x, 8 px -> 12x, 32 px -> 3x, >= 64 px -> 1x


def _to_pil(arr: np.ndarray, scale: int) -> Image.Image:
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def _save_atomic(img: Image.Image, path: str | Path, **kwargs) -> Path:
    with atomic_file(path) as handle:
        img.save(handle, **kwargs)
    return Path(path)


def grid_image(images: np.ndarray | Tensor, nrow: int | None = None, padding: int = 2,
               scale: int | None = None, row_labels: Sequence[str] | None = None) -> Image.Image:
    """The grid as a Pillow image; small tiles are upscaled nearest-neighbour (default 96 // H times).
    ``row_labels``: one text per grid row, written in a margin on the left (e.g. the class of each row)."""
    arr = _as_uint8_stack(images)
    scale = _default_scale(arr.shape[1]) if scale is None else int(scale)
    grid = _to_pil(make_grid(arr, nrow=nrow, padding=padding), scale)
    return grid if row_labels is None else _label_rows(grid, row_labels, (arr.shape[1] + padding) * scale)


def _label_rows(grid: Image.Image, labels: Sequence[str], row_height: int) -> Image.Image:
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(10, row_height // 3))
    draw = ImageDraw.Draw(grid)
    margin = 8 + max(int(draw.textlength(str(text), font=font)) for text in labels)
    out = Image.new(grid.mode, (grid.width + margin, grid.height), 0 if grid.mode == "L" else (0, 0, 0))
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    white = 255 if out.mode == "L" else (255, 255, 255)
    for row, text in enumerate(labels):
        draw.text((4, row * row_height + row_height // 2), str(text), fill=white, font=font, anchor="lm")
    return out


# Picture formats a grid may be written in, by extension (Pillow writes each without extra dependencies)
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF",
                 ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM"}


def image_format(path: str | Path, flag: str = "--out") -> str:
    """The Pillow format of a picture file by its extension; another extension is a one-line error."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_FORMATS:
        shown = f"extension {suffix!r}" if suffix else "no extension"
        raise DdpmkitError(f"{flag} {path} has {shown}, not a picture format; name the file .png (or "
                           f"{', '.join(s for s in IMAGE_FORMATS if s != '.png')})")
    return IMAGE_FORMATS[suffix]


def save_grid(images: np.ndarray | Tensor, path: str | Path, nrow: int | None = None,
              scale: int | None = None, row_labels: Sequence[str] | None = None) -> Path:
    """Write a grid atomically (see :func:`grid_image`) in the format its extension names (.png, .jpg, ...)."""
    return _save_atomic(grid_image(images, nrow=nrow, scale=scale, row_labels=row_labels), path,
                        format=image_format(path, "the grid"))


def save_gif(frames: list[np.ndarray], path: str | Path, duration_ms: int = 80,
             final_hold_ms: int = 1500, scale: int | None = None) -> Path:
    """Write an animated GIF (looping) of uint8 (H, W[, C]) frames; the last frame stays ``final_hold_ms``.

    Pillow merges identical consecutive frames (adding their durations), so a GIF of repeated frames has
    fewer frames than the list.
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    stack = [_as_uint8_stack(np.asarray(f)[None])[0] for f in frames]
    scale = _default_scale(stack[0].shape[0]) if scale is None else int(scale)
    pil = [_to_pil(f, scale) for f in stack]
    durations = [int(duration_ms)] * (len(pil) - 1) + [int(final_hold_ms)]
    return _save_atomic(pil[0], path, format="GIF", save_all=True, append_images=pil[1:],
                        duration=durations, loop=0)
