"""Load a trained run (or one checkpoint) and generate images with any sampler."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .diffusion import Diffusion
from .errors import DdpmkitError
from .models import UNet, UNetConfig
from .sampling import SAMPLERS, sample
from .training.checkpoint import load_checkpoint, resolve_checkpoint
from .training.device import autocast_dtype, select_device
from .viz import to_uint8


class Pipeline:
    """EMA weights + the diffusion they were trained with, ready to sample.

    >>> pipe = Pipeline.from_run("runs/mnist")
    >>> images = pipe.generate(16, sampler="ddim", steps=50, seed=0)   # uint8 (16, H, W, C)
    """

    def __init__(self, model: UNet, diffusion: Diffusion, device: torch.device, precision: str = "fp32",
                 checkpoint: Path | None = None, state: dict | None = None):
        self.model, self.diffusion, self.device = model.eval(), diffusion, device
        self.amp_dtype = autocast_dtype(precision, device)
        self.checkpoint, self.state = checkpoint, state or {}
        self.class_names = self.state.get("data", {}).get("class_names", [])
        self.step = self.state.get("step")

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                 weights: str = "ema") -> Pipeline:
        """From a run folder (its newest checkpoint) or a checkpoint folder; ``weights`` is "ema" or "model"."""
        folder = resolve_checkpoint(Path(path))
        tensors, state = load_checkpoint(folder, names=(weights,))
        if weights not in tensors:
            raise DdpmkitError(f"{folder} has no {weights} weights; use weights='ema' or 'model'")
        try:
            unet_config = UNetConfig.from_dict(state["unet"])
            diffusion = Diffusion.from_dict(state["diffusion"])
        except KeyError as exc:
            raise DdpmkitError(f"{folder}/state.json lacks {exc}; it is not a complete ddpmkit checkpoint") from exc
        torch_device = select_device(device)
        model = UNet(unet_config)
        try:
            model.load_state_dict(tensors[weights])
        except RuntimeError as exc:
            raise DdpmkitError(f"weights in {folder} do not fit the model its state.json describes: "
                               f"{str(exc).splitlines()[0]}") from exc
        return cls(model.to(torch_device), diffusion, torch_device, precision, folder, state)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.model.config
        return (c.in_channels, c.image_size, c.image_size)

    def generate(
        self,
        num: int,
        sampler: str = "ddim",
        steps: int | None = 50,
        eta: float = 0.0,
        seed: int = 0,
        labels: list[int] | torch.Tensor | None = None,
        guidance: float | None = None,
        batch_size: int = 256,
        progress: bool = False,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        return_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """``num`` images as uint8 (N, H, W, C) (or float (N, C, H, W) in [-1, 1] with ``return_tensor``).

        The initial noise comes from one generator seeded with ``seed`` and is drawn for all images up front, so
        the deterministic samplers (DDIM with η = 0, DPM-Solver++) give the same images whatever the batch size.
        """
        if num < 1 or batch_size < 1:
            raise DdpmkitError(f"--num and --batch-size must be at least 1 (got {num} and {batch_size})")
        if sampler not in SAMPLERS:
            raise DdpmkitError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
        T = self.diffusion.num_steps
        if steps is not None and not 1 <= steps <= T:
            raise DdpmkitError(f"steps must be between 1 and {T}, got {steps}")
        if not 0.0 <= eta <= 1.0:
            raise DdpmkitError(f"eta must be in [0, 1], got {eta}")
        label_tensor = None
        if labels is not None:
            label_tensor = torch.as_tensor(labels, dtype=torch.long).flatten()
            k = self.model.config.num_classes
            if k is None:
                raise DdpmkitError("this model is unconditional; drop --labels")
            if label_tensor.numel() not in (1, num) or label_tensor.min() < 0 or label_tensor.max() >= k:
                raise DdpmkitError(f"labels must be 1 or {num} values in 0..{k - 1}")
            label_tensor = label_tensor.expand(num) if label_tensor.numel() == 1 else label_tensor
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((num, *self.image_shape), generator=generator)
        outputs = []
        bar = tqdm(total=num, desc=f"{sampler} {steps or ''}".strip(), unit="img", disable=not progress)
        for start in range(0, num, batch_size):
            chunk = noise[start:start + batch_size]
            chunk_labels = None if label_tensor is None else label_tensor[start:start + batch_size]
            images = sample(self.model, self.diffusion, chunk.shape, sampler=sampler, steps=steps, eta=eta,
                            labels=chunk_labels, guidance=guidance, generator=generator, x_T=chunk,
                            device=self.device, autocast_dtype=self.amp_dtype, callback=callback)
            outputs.append(images.cpu())
            bar.update(len(chunk))
        bar.close()
        result = torch.cat(outputs).clamp(-1, 1)
        return result if return_tensor else to_uint8(result)
