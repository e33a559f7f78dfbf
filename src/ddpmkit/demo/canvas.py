"""The Edit tab's drawings as model inputs, without Gradio: a sketch becomes an image at the run's size and channels,
the painted layer of an image editor becomes a 0/1 mask.

An editor's value is what Gradio's ``gr.Sketchpad`` / ``gr.ImageEditor`` hand over with ``type="numpy"``: a dict
with ``background``, ``layers`` and ``composite`` (uint8 arrays, RGBA by default), or a plain array.

Light or dark: a sketch pad draws black strokes on white, while MNIST's digits are white on black. Which way round a
picture is follows from its border (the background a digit is drawn on): :func:`dark_background` says it for a set
of images, and :func:`sketch_to_image` inverts the sketch when its background and the run's differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..errors import DdpmkitError

EDITOR_SIDE = 280  # the editors' canvas: 10 pixels per MNIST pixel, big enough to draw on with a mouse
MIN_INK = 16  # a sketch whose grey levels span less than this is empty


def dark_background(images: np.ndarray) -> bool:
    """Whether uint8 images ((N, H, W, C) or (H, W, C)) are drawn on a dark background: their border pixels'
    mean is below mid-grey."""
    array = images[None] if images.ndim == 3 else images
    border = np.concatenate([array[:, 0].ravel(), array[:, -1].ravel(), array[:, :, 0].ravel(),
                             array[:, :, -1].ravel()])
    return float(border.mean()) < 128.0


def _flatten(picture: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): grey planes repeated, an alpha channel composited over white."""
    array = np.asarray(picture)
    if array.dtype != np.uint8:
        raise DdpmkitError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] in (2, 4):  # grey + alpha or RGBA: over white, as a page shows it
        colour, alpha = array[..., :-1].astype(np.float32), array[..., -1:].astype(np.float32) / 255.0
        array = np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def canvas_picture(value: Any, what: str = "Sketch") -> np.ndarray:
    """The picture an editor shows, as uint8 RGB (H, W, 3): its composite (else its background), transparent
    pixels over white. A one-line error naming ``what`` when there is none."""
    if isinstance(value, dict):
        value = value.get("composite") if value.get("composite") is not None else value.get("background")
    if value is None:
        raise DdpmkitError(f"{what}: the canvas is empty; draw on it first")
    if isinstance(value, Image.Image):
        value = np.asarray(value.convert("RGBA"))
    return _flatten(value)


def _square(height: int, width: int, what: str) -> None:
    if height != width:
        raise DdpmkitError(f"{what}: the canvas is {width}×{height}; the run draws square images, so draw on a "
                           "square canvas")


def sketch_to_image(value: Any, size: int, channels: int, dark: bool) -> np.ndarray:
    """A sketch as a model input: uint8 (size, size, channels), area-averaged down to the run's size (grey for a
    1-channel run), and inverted when its background (light for a sketch pad) is not the run's (``dark``)."""
    rgb = canvas_picture(value, "Sketch")
    _square(*rgb.shape[:2], "Sketch")
    grey = rgb.min(axis=-1) if channels == 1 else None  # the darkest channel: a coloured stroke counts as ink
    if int(np.ptp(rgb if grey is None else grey)) < MIN_INK:
        raise DdpmkitError("Sketch: nothing is drawn; draw a digit on the canvas first")
    picture = Image.fromarray(grey) if grey is not None else Image.fromarray(rgb)
    small = np.asarray(picture.resize((size, size), Image.Resampling.BOX))
    if dark_background(rgb) != dark:
        small = 255 - small
    small = small[..., None] if small.ndim == 2 else small
    return np.ascontiguousarray(small, dtype=np.uint8)


def mask_from_layers(value: Any, size: int) -> np.ndarray:
    """The painted strokes of an editor's layers as a (size, size) uint8 mask, 1 = repaint: a run pixel is
    repainted when at least half of the canvas pixels over it are painted (a stroke's alpha above 0; on layers
    without alpha, any colour)."""
    layers = [np.asarray(layer) for layer in ((value.get("layers") or []) if isinstance(value, dict) else [])
              if layer is not None]
    if not layers:
        raise DdpmkitError("Mask: nothing is painted; paint over the part of the image to repaint")
    painted = np.zeros(layers[0].shape[:2], dtype=bool)
    for layer in layers:
        if layer.shape[:2] != painted.shape:
            raise DdpmkitError(f"Mask: the layers differ in size ({layer.shape[1]}×{layer.shape[0]} and "
                               f"{painted.shape[1]}×{painted.shape[0]}); paint on one canvas")
        rgba = layer[..., None] if layer.ndim == 2 else layer
        painted |= rgba[..., -1] > 0 if rgba.shape[-1] in (2, 4) else rgba.max(axis=-1) > 0
    _square(*painted.shape, "Mask")
    coverage = Image.fromarray(painted.astype(np.float32)).resize((size, size), Image.Resampling.BOX)
    return (np.asarray(coverage) >= 0.5).astype(np.uint8)


def check_mask_area(mask: np.ndarray) -> np.ndarray:
    """``mask`` when it repaints some pixels and keeps some; else a one-line error naming the mask."""
    if not mask.any():
        raise DdpmkitError("Mask: nothing is painted; paint over the part of the image to repaint")
    if mask.all():
        raise DdpmkitError("Mask: it covers the whole image, which is sampling from noise (the Generate tab); "
                           "leave some of the image unpainted to keep")
    return mask


def enlarge(image: np.ndarray, side: int = EDITOR_SIDE) -> np.ndarray:
    """uint8 (H, W, C) blown up (nearest pixel, a whole factor) to about ``side`` pixels as RGB, to paint over."""
    factor = max(1, side // image.shape[0])
    rgb = _flatten(image)
    return np.ascontiguousarray(rgb.repeat(factor, axis=0).repeat(factor, axis=1))
