"""What an edit starts from: images and masks from PNG files, data set entries or arrays, checked against the run.

An image is named by a PNG path or by a data set entry ``NAME:SPLIT:INDEX`` (``mnist:test:17``); a mask by a PNG
path (white = repaint, black = keep) or by a region name (:data:`MASK_REGIONS`). Everything here is checked before
any model evaluation, with one line that names the problem and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data.image_array import to_model_range
from ..errors import DdpmkitError

MASK_REGIONS = ("lower-half", "upper-half", "left-half", "right-half", "center")


def region_mask(name: str, size: int) -> np.ndarray:
    """A named (size, size) mask, 1 = repaint: a half of the image, or its central square (half the side)."""
    mask = np.zeros((size, size), dtype=np.uint8)
    half = size // 2
    if name == "lower-half":
        mask[half:] = 1
    elif name == "upper-half":
        mask[:half] = 1
    elif name == "left-half":
        mask[:, :half] = 1
    elif name == "right-half":
        mask[:, half:] = 1
    elif name == "center":
        mask[size // 4: size // 4 + half, size // 4: size // 4 + half] = 1
    else:
        raise DdpmkitError(f"unknown mask region {name!r}; give a PNG or one of {', '.join(MASK_REGIONS)}")
    return mask


def _open_png(path: str, flag: str, instead: str = "a data set entry such as mnist:test:17") -> Image.Image:
    if not Path(path).is_file():
        raise DdpmkitError(f"{flag} {path}: no such file; give a PNG (or {instead})")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise DdpmkitError(f"{flag} {path} is not an image Pillow can read ({exc}); give a PNG") from None
    return image


def read_image(spec: str, channels: int, size: int, flag: str = "--image") -> tuple[np.ndarray, int | None]:
    """uint8 (H, W, C) and its label (a data set entry's; None for a file) for ``spec``.

    A data set entry is loaded at the run's ``size`` (as training resizes it).
    A file's pixels are taken as they are: grey (L, or RGB with equal channels) for a 1-channel run, RGB for a
    3-channel one; transparency is composited over white.
    """
    parts = spec.split(":")
    if len(parts) == 3 and not Path(spec).exists():
        name, split, index = parts
        from ..data import load_dataset

        if not index.isdigit():
            raise DdpmkitError(f"{flag} {spec}: the index must be a whole number "
                               "(NAME:SPLIT:INDEX, e.g. mnist:test:17)")
        data = load_dataset(name, split, image_size=size, progress=False)
        if int(index) >= len(data):
            raise DdpmkitError(f"{flag} {spec}: {name} {split} has {len(data)} images (index 0..{len(data) - 1})")
        label = int(data.labels[int(index)]) if data.num_classes else None
        return data.images[int(index)], label
    image = _open_png(spec, flag)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB" if channels == 3 else "L")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if channels == 1 and array.shape[-1] == 3:
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])):
            raise DdpmkitError(f"{flag} {spec} is in colour but the run draws grey images; save it in greyscale")
        array = array[..., :1]
    if channels == 3 and array.shape[-1] == 1:
        raise DdpmkitError(f"{flag} {spec} is grey but the run draws colour (RGB) images; save it as RGB")
    return np.ascontiguousarray(array), None


def read_mask(spec: str, size: int, flag: str = "--mask") -> np.ndarray:
    """A (H, W) uint8 mask of 0 and 1 from a region name or a PNG (white 255 = repaint, black 0 = keep)."""
    if spec in MASK_REGIONS:
        return region_mask(spec, size)
    image = _open_png(spec, flag, f"a region: {', '.join(MASK_REGIONS)}")
    return as_mask(np.asarray(image.convert("L")), flag)


def as_mask(mask: np.ndarray | torch.Tensor, what: str = "the mask") -> np.ndarray:
    """A mask as uint8 0/1: bool, 0/1 or 0/255 values (anything else is refused as not binary)."""
    array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DdpmkitError(f"{what} must be one (H, W) plane, got shape {array.shape}")
    values = set(np.unique(array).tolist())
    if values <= {0, 1} or values <= {False, True}:
        return array.astype(np.uint8)
    if values <= {0, 255}:
        return (array == 255).astype(np.uint8)
    others = sorted(v for v in values if v not in (0, 1, 255))
    raise DdpmkitError(f"{what} is not binary (it has grey pixels, e.g. value {others[0]}): use black (keep) and "
                       "white (repaint) only")


def as_model_images(images: np.ndarray | torch.Tensor, channels: int, size: int,
                    what: str = "the image") -> torch.Tensor:
    """Images as float32 (N, C, H, W) in [-1, 1], checked against the run's channels and size.

    uint8 arrays may be (H, W), (H, W, C) or (N, H, W, C); a float tensor must already be (N, C, H, W) or (C, H, W)
    in the model's range.
    """
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        x = images[None] if images.dim() == 3 else images
        if x.dim() != 4:
            raise DdpmkitError(f"{what}: a float tensor must be (N, C, H, W) in [-1, 1], got {tuple(images.shape)}")
        got_c, got_size = x.shape[1], tuple(x.shape[-2:])
    else:
        array = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
        if array.dtype != np.uint8:
            raise DdpmkitError(f"{what} must be uint8 pixels (0..255), got {array.dtype}")
        if array.ndim == 2:
            array = array[None, ..., None]
        elif array.ndim == 3:
            array = array[None] if array.shape[-1] in (1, 3) else array[..., None]
        if array.ndim != 4:
            raise DdpmkitError(f"{what} must be (H, W, C) or (N, H, W, C), got shape {array.shape}")
        got_c, got_size = array.shape[-1], tuple(array.shape[1:3])
        x = None
    if got_size != (size, size):
        raise DdpmkitError(f"{what} is {got_size[1]}×{got_size[0]} but the run draws {size}×{size}; "
                           f"resize it to {size}×{size}")
    if got_c != channels:
        kinds = {1: "grey (1 channel)", 3: "RGB (3 channels)"}
        raise DdpmkitError(f"{what} is {kinds.get(got_c, f'{got_c} channels')} but the run draws "
                           f"{kinds.get(channels, f'{channels} channels')} images; convert it")
    return x.float() if x is not None else to_model_range(array)
