"""Feature extractors: the protocol the metrics rely on, and the batching every network extractor shares.

A feature extractor maps images to (N, D) float32 features and names itself: ``id`` (network, layer,
dimension) and ``resize`` (how images reach the network's input size). Reference statistics store both
and refuse to be compared with features from any other extractor.

:class:`BatchedExtractor` does the common work: the canonical uint8 form (``as_uint8_nhwc``), batches of
``batch_size`` moved to ``device``, inference mode, a progress bar, float32 numpy outputs concatenated in
order. A subclass supplies only ``preprocess`` (uint8 NHWC tensor on the device -> network input) and
``forward`` (network input -> one tensor, or a tuple of tensors such as (features, logits)).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DdpmkitError
from .images import as_uint8_nhwc


class FeatureExtractor(Protocol):
    """Anything that maps uint8 NHWC images to (N, D) features and names itself."""

    id: str
    resize: str

    def __call__(self, images: np.ndarray, *, progress: bool = True) -> np.ndarray: ...


class BatchedExtractor:
    """Base class of the network extractors: ``extractor(images, progress=False) -> (N, D) float32``."""

    id: str = ""
    resize: str = ""
    desc: str = "features"  # progress bar label

    def __init__(self, *, device: str | torch.device = "cpu", batch_size: int = 256) -> None:
        if batch_size < 1:
            raise DdpmkitError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) tensor on ``self.device`` -> the network's input."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Network input -> outputs with the batch as first dimension."""
        raise NotImplementedError

    def outputs(self, images: np.ndarray | torch.Tensor, *, progress: bool = True) -> tuple[np.ndarray, ...]:
        """Every output of ``forward`` for all ``images`` (uint8 NHWC or float NCHW in [-1, 1]), float32."""
        images = as_uint8_nhwc(images)
        if len(images) == 0:
            raise DdpmkitError(f"{self.desc}: no images to extract features from")
        chunks: list[tuple[np.ndarray, ...]] = []
        with torch.inference_mode(), tqdm(total=len(images), desc=self.desc, unit="img", disable=not progress,
                                          leave=False) as bar:
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(images[start:start + self.batch_size]).to(self.device)
                out = self.forward(self.preprocess(batch))
                out = out if isinstance(out, tuple) else (out,)
                chunks.append(tuple(o.float().cpu().numpy() for o in out))
                bar.update(len(batch))
        return tuple(np.concatenate(parts) for parts in zip(*chunks))

    def __call__(self, images: np.ndarray | torch.Tensor, *, progress: bool = True) -> np.ndarray:
        """(N, D) float32 features (the first output of ``forward``)."""
        return self.outputs(images, progress=progress)[0]
