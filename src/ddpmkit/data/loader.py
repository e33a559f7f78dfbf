"""BatchLoader: in-memory batches in an order that is a pure function of (seed, epoch, position).

The permutation of epoch e is ``torch.randperm(N)`` from a generator seeded with hash(seed, e, "perm");
the flips of batch b of epoch e come from a generator seeded with hash(seed, e, b, "flip"). So a loader
restored from ``state_dict()`` taken mid-epoch yields exactly the batches an uninterrupted run would.
Pixels map to [-1, 1] as x / 127.5 - 1 (uint8 0 -> -1, 255 -> 1: ``TO_MODEL_RANGE``). Each batch comes with the
model's keyword arguments for its images: ``{}`` for an unconditional model, ``{"labels": …}`` for a
class-conditional one (``model_kwargs=data.label_kwargs``), so the training loop passes them on unread.

A data-parallel run (``rank``, ``world_size``) keeps ``batch_size`` as the *global* batch: every process computes
the same global batch (and its flips) and keeps its own contiguous block of ``batch_size / world_size`` rows, rank 0
the first. So the union of the shards, in rank order, is exactly the single-process batch, and the state (epoch,
position) counts global batches: a checkpoint from any number of processes resumes in any other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..errors import DdpmkitError
from .image_array import TO_MODEL_RANGE, ImageArray

Batch = tuple[Tensor, dict[str, Tensor]]  # images float32 (B, C, H, W) in [-1, 1], the model's keyword arguments


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from the parts (sha256 of their repr): independent streams per (seed, epoch, batch)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class BatchLoader:
    """Batches (x float32 (B, C, H, W) in [-1, 1], model_kwargs) from an ImageArray held in memory.

    ``model_kwargs(indices)`` gives the keyword arguments of the images at ``indices`` (``data.label_kwargs``:
    ``{"labels": int64 (B,)}``); without it every batch has ``{}``.
    ``for x, kwargs in loader`` yields the rest of the current epoch (all of it on a fresh loader) and leaves
    the state at the start of the next epoch; ``batches()`` loops over epochs forever. The state is
    advanced before each batch is yielded, so ``state_dict()`` taken after consuming a batch resumes
    with the next one.
    """

    def __init__(self, data: ImageArray, batch_size: int, *, shuffle: bool = True, hflip: bool = False,
                 seed: int = 0, drop_last: bool = True,
                 model_kwargs: Callable[[np.ndarray], dict[str, Tensor]] | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise DdpmkitError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} processes")
        if world_size > 1 and (batch_size % world_size or not drop_last):
            raise DdpmkitError(f"the batch of {batch_size} does not split evenly across {world_size} processes; "
                               f"use a multiple of {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle, self.hflip, self.drop_last = shuffle, hflip, drop_last
        self.seed = int(seed)
        self.model_kwargs = model_kwargs
        self.epoch = 0
        self.position = 0  # batches of the current epoch already yielded
        # One contiguous uint8 (N, C, H, W) copy; a batch is one gather of rows and one table lookup, done in
        # numpy on purpose: single-threaded, so it never waits at an OpenMP barrier while training threads
        # hold the cores (torch's parallel index_select/float/div took ~15 ms each under load, numpy ~0.2 ms).
        self._images = np.ascontiguousarray(data.images.transpose(0, 3, 1, 2))
        if len(self) == 0:
            raise DdpmkitError(f"{data.name} has {len(data)} images, fewer than batch_size {batch_size}; "
                               f"lower the batch size")

    def __len__(self) -> int:
        n = len(self._images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """The sample order of ``epoch`` (a permutation, or 0..N-1 without shuffle)."""
        n = len(self._images)
        if not self.shuffle:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(derived_seed(self.seed, epoch, "perm"))
        return torch.randperm(n, generator=gen)

    def batch(self, epoch: int, index: int, order: Tensor | None = None) -> Batch:
        """Batch ``index`` of ``epoch``, computed from scratch (pure function of seed, epoch, index); in a
        data-parallel run this process's block of it."""
        order = self.order(epoch) if order is None else order
        idx = order[index * self.batch_size:(index + 1) * self.batch_size].numpy()
        flip = None
        if self.hflip:  # drawn for the whole batch, so a row's flip does not depend on the process count
            gen = torch.Generator().manual_seed(derived_seed(self.seed, epoch, index, "flip"))
            flip = (torch.rand(len(idx), generator=gen) < 0.5).numpy()
        if self.world_size > 1:
            share = len(idx) // self.world_size
            keep = slice(self.rank * share, (self.rank + 1) * share)
            idx = idx[keep]
            flip = flip[keep] if flip is not None else None
        pixels = self._images[idx]  # a fresh copy: safe to flip in place
        if flip is not None:
            pixels[flip] = pixels[flip, ..., ::-1]
        kwargs = self.model_kwargs(idx) if self.model_kwargs is not None else {}
        return torch.from_numpy(TO_MODEL_RANGE[pixels]), kwargs

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self.epoch, self.position
        order = self.order(epoch)
        for index in range(start, len(self)):
            if (self.epoch, self.position) != (epoch, index):
                raise RuntimeError("BatchLoader state changed during iteration (load_state_dict mid-loop?)")
            out = self.batch(epoch, index, order)
            self.epoch, self.position = (epoch + 1, 0) if index + 1 == len(self) else (epoch, index + 1)
            yield out

    def batches(self) -> Iterator[Batch]:
        """Loop over epochs without end, from the current state."""
        while True:
            yield from self

    def state_dict(self) -> dict:
        """JSON-safe position: {"epoch", "position", "seed"}."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        epoch, position, seed = int(d["epoch"]), int(d["position"]), int(d["seed"])
        if not 0 <= position <= len(self) or epoch < 0:
            raise DdpmkitError(f"loader state epoch={epoch} position={position} is out of range "
                               f"(this data set has {len(self)} batches per epoch)")
        if position == len(self):
            epoch, position = epoch + 1, 0
        self.epoch, self.position, self.seed = epoch, position, seed
