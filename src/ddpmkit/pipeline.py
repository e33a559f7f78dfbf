"""Load a trained run (or one checkpoint) and generate images with any sampler.

Loading needs the run folder (:class:`~ddpmkit.run.RunInfo`), the checkpoint format, the UNet and the diffusion
math; it never imports training. What to generate is a :class:`~ddpmkit.request.SampleRequest`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, load_weights, tensor_file
from .device import autocast_dtype, randn, select_device
from .diffusion import Diffusion
from .errors import DdpmkitError
from .models import UNet
from .request import Labels, SampleRequest
from .run import RunFolder, RunInfo
from .sampling import Callback, sample
from .viz import to_uint8


class Pipeline:
    """EMA weights + the diffusion they were trained with, ready to sample.

    >>> pipe = Pipeline.from_run("runs/mnist")
    >>> images = pipe.generate(16, sampler="ddim", steps=50, seed=0)   # uint8 (16, H, W, C)
    >>> images = pipe.generate(SampleRequest(num=16, sampler="ddim", steps=50, seed=0))   # the same
    """

    def __init__(self, model: UNet, diffusion: Diffusion, device: torch.device, precision: str = "fp32",
                 info: RunInfo | None = None, run: RunFolder | None = None):
        self.model, self.diffusion, self.device = model.eval(), diffusion, device
        self.amp_dtype = autocast_dtype(precision, device)
        self.info = info if info is not None else RunInfo(model.config, diffusion)
        self.run = run
        self.checkpoint = self.info.checkpoint
        self.class_names = list(self.info.class_names)
        self.step = self.info.step if info is not None else None

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                 weights: str = "ema", lora: str | Path | None = None, lora_scale: float = 1.0) -> Pipeline:
        """From a run folder (its newest checkpoint) or a checkpoint folder; ``weights`` is "ema" or "model".

        ``lora`` is an adapter folder (``ddpmkit lora --out DIR``) made for this base (checked by fingerprint),
        applied at strength ``lora_scale``: W + s·(α/r)·B·A. A LoRA run's own checkpoint loads with its adapters.
        """
        if not _finite(lora_scale):
            raise DdpmkitError(f"--lora-scale must be a finite number (0 the base, 1 as trained), got {lora_scale}")
        run, folder = RunFolder.locate(path)
        info = run.info(folder)
        tensors, _ = load_checkpoint(folder, names=(weights,))
        if weights not in tensors:
            raise DdpmkitError(f"{folder} has no {weights} weights; use weights='ema' or 'model'")
        torch_device = select_device(device)
        model = UNet(info.unet)
        if info.lora:  # a LoRA run's checkpoint: the base with its adapters
            from .lora import inject

            inject(model, info.lora["rank"], info.lora["alpha"], info.lora["targets"])
        load_weights(model, tensors[weights], tensor_file(folder, weights))  # a mismatch: one line, not a page
        if lora is not None:
            from .lora import apply_adapter

            if weights != "ema":
                raise DdpmkitError("a LoRA adapter is made for its base's EMA weights; drop --weights model "
                                   "(weights='model') to apply it")
            apply_adapter(model, lora, lora_scale, base_name=f"{folder}")
        elif lora_scale != 1.0:
            from .lora import set_scale

            set_scale(model, lora_scale)
        return cls(model.to(torch_device), diffusion=info.diffusion, device=torch_device, precision=precision,
                   info=info, run=run)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.model.config
        return (c.in_channels, c.image_size, c.image_size)

    @property
    def num_classes(self) -> int | None:
        return self.model.config.num_classes

    def resolve(self, request: SampleRequest) -> SampleRequest:
        """``request`` with the run's and the sampler's defaults filled in, checked against this run."""
        return request.resolve(self.info)

    def generate(
        self,
        request: SampleRequest | int,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float = 0.0,
        seed: int = 0,
        spacing: str | None = None,
        labels: Labels | None = None,
        guidance: float | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        batch_size: int = 256,
        progress: bool = False,
        callback: Callback | None = None,
        return_tensor: bool = False,
        clip_denoised: bool | None = None,
        cuda_graph: bool | None = None,
    ) -> np.ndarray | torch.Tensor:
        """The images of ``request`` as uint8 (N, H, W, C) (or float (N, C, H, W) in [-1, 1] with ``return_tensor``).

        ``request`` is a :class:`~ddpmkit.request.SampleRequest`, or the number of images with the request's fields
        as keywords (``model_kwargs`` are its ``conditions``); what it leaves out comes from the run (the sampler
        of its grids: the mnist preset's is DDPM-50; its guidance; its clipping) and the sampler's defaults.
        ``progress`` shows a bar, ``callback`` receives every step of every batch, and ``cuda_graph`` replays the
        UNet from a CUDA graph (default: on with CUDA; see :class:`ddpmkit.sampling.CUDAGraphModelFn`).
        """
        if not isinstance(request, SampleRequest):
            request = SampleRequest(num=request, sampler=sampler, steps=steps, spacing=spacing, eta=eta,
                                    clip_denoised=clip_denoised, labels=labels, guidance=guidance, seed=seed,
                                    batch_size=batch_size, conditions=model_kwargs)
        request = self.resolve(request)
        num, batch = request.num, request.batch_size
        kwargs = request.model_kwargs()
        generator = torch.Generator().manual_seed(request.seed)
        noise = randn((num, *self.image_shape), generator)
        use_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        outputs = []
        bar = tqdm(total=num, desc=f"{request.sampler} {request.steps}", unit="img", disable=not progress)
        for start in range(0, num, batch):
            chunk = noise[start:start + batch]
            chunk_kwargs = {k: v[start:start + batch] for k, v in kwargs.items()}
            images = sample(self.model, self.diffusion, chunk.shape, sampler=request.sampler, steps=request.steps,
                            eta=request.eta, spacing=request.spacing, model_kwargs=chunk_kwargs,
                            guidance=request.guidance, generator=generator, x_T=chunk, device=self.device,
                            autocast_dtype=self.amp_dtype, callback=callback, clip_denoised=request.clip_denoised,
                            cuda_graph=use_graph)
            outputs.append(images.cpu())
            bar.update(len(chunk))
        bar.close()
        result = torch.cat(outputs).clamp(-1, 1)
        return result if return_tensor else to_uint8(result)


def _finite(value: object) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False
