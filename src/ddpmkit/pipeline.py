"""Load a trained run (or one checkpoint) and generate images with any sampler.

Loading needs the run folder (:class:`~ddpmkit.run.RunInfo`), the checkpoint format, the UNet and the diffusion
math; it never imports training. What to generate is a :class:`~ddpmkit.request.SampleRequest`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
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

    # ----- editing (ddpmkit.editing over this run) ------------------------------------------------------------

    def edit_request(self, request: SampleRequest | None, images: torch.Tensor) -> SampleRequest:
        """:func:`edit_request` for ``images`` on this run."""
        return edit_request(request, self.info, len(images))

    def _edit_batches(self, request: SampleRequest, images: torch.Tensor, progress: bool, what: str,
                      run: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Run an edit batch by batch, with x_T drawn for all images up front from the request's seed."""
        images = images.expand(request.num, *images.shape[1:]) if len(images) == 1 else images
        generator = torch.Generator().manual_seed(request.seed)
        noise = randn((request.num, *self.image_shape), generator)
        kwargs = request.model_kwargs()
        outputs = []
        bar = tqdm(total=request.num, desc=what, unit="img", disable=not progress)
        for start in range(0, request.num, request.batch_size):
            end = start + request.batch_size
            outputs.append(run(images[start:end], noise[start:end], {k: v[start:end] for k, v in kwargs.items()},
                               generator).cpu())
            bar.update(len(outputs[-1]))
        bar.close()
        return torch.cat(outputs).clamp(-1, 1)

    def _common(self, request: SampleRequest) -> dict[str, Any]:
        return dict(sampler=request.sampler, steps=request.steps, eta=request.eta, spacing=request.spacing,
                    guidance=request.guidance, clip_denoised=request.clip_denoised, device=self.device,
                    autocast_dtype=self.amp_dtype)

    def img2img(self, image: np.ndarray | torch.Tensor, strength: float, request: SampleRequest | None = None,
                progress: bool = False, callback: Callback | None = None) -> np.ndarray:
        """SDEdit (:func:`ddpmkit.editing.img2img`): uint8 results, one per image of ``request``.

        With the same request, strength 1 gives exactly :meth:`generate`'s images and strength 0 the input.
        """
        from .editing import img2img
        from .editing.methods import check_strength

        strength = check_strength(strength)
        x0 = self._edit_images(image)
        request = self.edit_request(request, x0)
        out = self._edit_batches(request, x0, progress, f"img2img {strength:g}", lambda x, noise, kwargs, g: img2img(
            self.model, self.diffusion, x, strength, noise=noise.to(self.device), model_kwargs=kwargs, generator=g,
            callback=callback, **self._common(request)))
        return to_uint8(out)

    def inpaint(self, image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor,
                request: SampleRequest | None = None, jump_length: int = 10, resample: int = 1,
                progress: bool = False, callback: Callback | None = None) -> np.ndarray:
        """RePaint (:func:`ddpmkit.editing.inpaint`): repaint where ``mask`` is white/1, keep the rest exactly."""
        from .editing import inpaint
        from .editing.inputs import as_mask
        from .editing.methods import check_mask, check_resampling

        x0 = self._edit_images(image)
        mask_tensor = check_mask(torch.from_numpy(as_mask(mask)), x0)
        request = self.edit_request(request, x0)
        check_resampling(request.sampler, jump_length, resample)
        out = self._edit_batches(request, x0, progress, "inpaint", lambda x, noise, kwargs, g: inpaint(
            self.model, self.diffusion, x, mask_tensor, jump_length=jump_length, resample=resample,
            noise=noise.to(self.device), model_kwargs=kwargs, generator=g, callback=callback, **self._common(request)))
        return to_uint8(out)

    def invert(self, image: np.ndarray | torch.Tensor, request: SampleRequest | None = None) -> torch.Tensor:
        """DDIM inversion (:func:`ddpmkit.editing.invert`) over the request's step count: the noise, float32."""
        from .editing import invert

        x0 = self._edit_images(image)
        request = self.edit_request(dataclasses.replace(request or SampleRequest(num=1), sampler="ddim"), x0)
        return invert(self.model, self.diffusion, x0.expand(request.num, *x0.shape[1:]), request.steps,
                      request.spacing, request.model_kwargs(), request.guidance, device=self.device,
                      autocast_dtype=self.amp_dtype).cpu()

    def interpolate(self, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, num: int,
                    request: SampleRequest | None = None) -> np.ndarray:
        """``num`` uint8 images from ``a`` to ``b`` (:func:`ddpmkit.editing.interpolate`), DDIM both ways."""
        from .editing import interpolate

        xa, xb = self._edit_images(a, "the first image"), self._edit_images(b, "the second image")
        request = self.edit_request(dataclasses.replace(request or SampleRequest(num=1), sampler="ddim", num=1), xa)
        kwargs = request.model_kwargs()
        out = interpolate(self.model, self.diffusion, xa[0], xb[0], num, request.steps, request.spacing, kwargs,
                          request.guidance, clip_denoised=request.clip_denoised, device=self.device,
                          autocast_dtype=self.amp_dtype)
        return to_uint8(out.cpu().clamp(-1, 1))

    def _edit_images(self, images: np.ndarray | torch.Tensor, what: str = "the image") -> torch.Tensor:
        from .editing.inputs import as_model_images

        c = self.model.config
        return as_model_images(images, c.in_channels, c.image_size, what)


def edit_request(request: SampleRequest | None, info: RunInfo, count: int = 1) -> SampleRequest:
    """The resolved request an edit of ``count`` images runs: one result per image (a single image is edited
    ``request.num`` times), and without labels the unconditional model (an edit keeps what the image is unless told
    a class). Needs no weights; a resolved request is returned as it is."""
    request = request if request is not None else SampleRequest(num=1)
    if request.resolved:
        return request
    if count > 1:
        request = dataclasses.replace(request, num=count)
    if info.num_classes is not None and request.labels is None and "labels" not in (request.conditions or {}):
        if request.guidance not in (None, 0.0):
            raise DdpmkitError("guidance needs a class to guide towards: give --label (or labels=...) with it")
        request = dataclasses.replace(request, labels=(0,), guidance=0.0)  # w = 0: the null label alone, one pass
    return request.resolve(info)


def _finite(value: object) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False
