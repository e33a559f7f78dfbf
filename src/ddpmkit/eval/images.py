"""One canonical image form for every metric: uint8 (N, H, W, C).

Metrics accept either uint8 NHWC arrays (what ``Pipeline.generate`` and the data sets give) or float
NCHW arrays/tensors in [-1, 1] (what a model gives). Floats are mapped to uint8 by
``round((x + 1) * 127.5)`` after clipping, so a metric sees exactly the pixels a saved PNG would hold
(clean-fid's point: score what you would publish, quantised).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DdpmkitError


def as_uint8_nhwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``images`` as a uint8 (N, H, W, C) array with C in {1, 3}.

    uint8 input must be NHWC (a 3-D uint8 array is read as (N, H, W), grayscale). Float input must be
    NCHW in [-1, 1]: ``u = round(clip((x + 1) * 127.5, 0, 255))``.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        images = images.numpy() if images.dtype == torch.uint8 else images.float().numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        if images.ndim == 3:
            images = images[..., None]
        out = images
    elif np.issubdtype(images.dtype, np.floating):
        if images.ndim != 4:
            raise DdpmkitError(f"float images must be (N, C, H, W) in [-1, 1], got shape {images.shape}")
        out = np.rint(np.clip((images.astype(np.float32) + 1.0) * 127.5, 0, 255)).astype(np.uint8)
        out = out.transpose(0, 2, 3, 1)
    else:
        raise DdpmkitError(f"images must be uint8 NHWC or float NCHW in [-1, 1], got dtype {images.dtype}")
    if out.ndim != 4 or out.shape[-1] not in (1, 3, 4):
        raise DdpmkitError(f"images must be (N, H, W, C) with C in 1, 3 or 4, got shape {out.shape}")
    if out.shape[-1] == 4:
        raise DdpmkitError("RGBA images: composite them on a background first (the data module does)")
    return np.ascontiguousarray(out)
