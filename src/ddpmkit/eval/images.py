"""One canonical image form for every metric: uint8 (N, H, W, C).

Metrics accept either uint8 NHWC arrays (what ``Pipeline.generate`` and the data sets give) or float
NCHW arrays/tensors in [-1, 1] (what a model gives). Floats go through :func:`ddpmkit.viz.to_uint8`,
``u = round((clamp(x, -1, 1) + 1) * 127.5)``, so a metric sees exactly the pixels a saved PNG would hold
(clean-fid's point: score what you would publish, quantised).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DdpmkitError
from ..viz import to_uint8


def as_uint8_nhwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``images`` as a contiguous uint8 (N, H, W, C) array with C in {1, 3}.

    uint8 input must be NHWC (a 3-D uint8 array is read as (N, H, W), grayscale) and is passed through.
    Float input must be NCHW in [-1, 1] and is converted by ``viz.to_uint8``.
    """
    if not (isinstance(images, torch.Tensor) and images.is_floating_point()):
        images = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if isinstance(images, torch.Tensor) or np.issubdtype(images.dtype, np.floating):
        if images.ndim != 4:
            raise DdpmkitError(f"float images must be (N, C, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        out = to_uint8(images)
    elif images.dtype == np.uint8:
        out = images[..., None] if images.ndim == 3 else images
    else:
        raise DdpmkitError(f"images must be uint8 NHWC or float NCHW in [-1, 1], got dtype {images.dtype}")
    if out.ndim != 4 or out.shape[-1] not in (1, 3, 4):
        raise DdpmkitError(f"images must be (N, H, W, C) with C in 1, 3 or 4, got shape {out.shape}")
    if out.shape[-1] == 4:
        raise DdpmkitError("RGBA images: composite them on a background first (the data module does)")
    return np.ascontiguousarray(out)
