"""Load a trained run (or one checkpoint) and generate images with any sampler.

Loading needs the run folder, the checkpoint format, the UNet and the diffusion math; it never imports training.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint
from .device import autocast_dtype, select_device
from .diffusion import Diffusion
from .errors import DdpmkitError
from .models import UNet, UNetConfig
from .run import RunFolder
from .sampling import Callback, SamplerSettings, check_sampler_args, sample
from .viz import to_uint8


def run_sampler(state: Mapping[str, Any]) -> tuple[str, int | None, str | None]:
    """The sampler a run's preset recommends, as its sample grids used it: ``train.sample_sampler``, ``sample_steps``
    and ``sample_spacing`` (None: the sampler's own spacing). A checkpoint without a config gives DDIM's defaults."""
    train = (state.get("config") or {}).get("train") or {}
    return train.get("sample_sampler", "ddim"), train.get("sample_steps"), train.get("sample_spacing")


def run_guidance(state: Mapping[str, Any]) -> float:
    """The classifier-free guidance scale a conditional run's preset recommends (``train.sample_guidance``, 1: none)."""
    train = (state.get("config") or {}).get("train") or {}
    return float(train.get("sample_guidance", 1.0))


class Pipeline:
    """EMA weights + the diffusion they were trained with, ready to sample.

    >>> pipe = Pipeline.from_run("runs/mnist")
    >>> images = pipe.generate(16, sampler="ddim", steps=50, seed=0)   # uint8 (16, H, W, C)
    """

    def __init__(self, model: UNet, diffusion: Diffusion, device: torch.device, precision: str = "fp32",
                 checkpoint: Path | None = None, state: dict | None = None, run: RunFolder | None = None):
        self.model, self.diffusion, self.device = model.eval(), diffusion, device
        self.amp_dtype = autocast_dtype(precision, device)
        self.checkpoint, self.state, self.run = checkpoint, state or {}, run
        self.class_names = self.state.get("data", {}).get("class_names", [])
        self.step = self.state.get("step")

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                 weights: str = "ema", lora: str | Path | None = None, lora_scale: float = 1.0) -> Pipeline:
        """From a run folder (its newest checkpoint) or a checkpoint folder; ``weights`` is "ema" or "model".

        ``lora`` is an adapter folder (``ddpmkit lora --out DIR``) made for this base (checked by fingerprint),
        applied at strength ``lora_scale``: W + s·(α/r)·B·A. A LoRA run's own checkpoint loads with its adapters.
        """
        run, folder = RunFolder.locate(path)
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
        if state.get("lora"):  # a LoRA run's checkpoint: the base with its adapters
            from .lora import inject

            inject(model, state["lora"]["rank"], state["lora"]["alpha"], state["lora"]["targets"])
        try:
            model.load_state_dict(tensors[weights])
        except RuntimeError as exc:
            raise DdpmkitError(f"weights in {folder} do not fit the model its state.json describes: "
                               f"{str(exc).splitlines()[0]}") from exc
        if lora is not None:
            from .lora import apply_adapter

            if weights != "ema":
                raise DdpmkitError("a LoRA adapter is made for its base's EMA weights; drop --weights model "
                                   "(weights='model') to apply it")
            apply_adapter(model, lora, lora_scale, base_name=f"{folder}")
        elif lora_scale != 1.0:
            from .lora import set_scale

            set_scale(model, lora_scale)
        return cls(model.to(torch_device), diffusion, torch_device, precision, folder, state, run)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.model.config
        return (c.in_channels, c.image_size, c.image_size)

    @property
    def num_classes(self) -> int | None:
        return self.model.config.num_classes

    def label_kwargs(self, labels: list[int] | torch.Tensor | np.ndarray, num: int) -> dict[str, torch.Tensor]:
        """``{"labels": (num,) tensor}`` from one label or ``num`` labels, checked against the model's classes."""
        label_tensor = torch.as_tensor(labels, dtype=torch.long).flatten()
        k = self.num_classes
        if k is None:
            raise DdpmkitError("this model is unconditional; drop --labels")
        if label_tensor.numel() not in (1, num) or label_tensor.min() < 0 or label_tensor.max() >= k:
            raise DdpmkitError(f"labels must be 1 or {num} values in 0..{k - 1}")
        return {"labels": label_tensor.expand(num) if label_tensor.numel() == 1 else label_tensor}

    def balanced_labels(self, num: int) -> list[int]:
        """Class-balanced labels 0, 1, …, K−1, 0, 1, … for ``num`` images (a conditional run's default)."""
        if self.num_classes is None:
            raise DdpmkitError("this model is unconditional: it has no labels to balance")
        return [i % self.num_classes for i in range(num)]

    def sampler_settings(self, sampler: str | None = None, steps: int | None = None, eta: float = 0.0,
                         spacing: str | None = None) -> SamplerSettings:
        """The checked settings :meth:`generate` samples with. What the caller leaves out comes from the run's
        recommendation (:func:`run_sampler`) when the sampler is the run's (no sampler: the run's), else from the
        sampler's own defaults (``SAMPLER_DEFAULTS``)."""
        run_name, run_steps, run_spacing = run_sampler(self.state)
        sampler = sampler or run_name
        if sampler == run_name:
            steps = run_steps if steps is None else steps
            spacing = spacing or run_spacing
        return check_sampler_args(sampler, steps, eta, self.diffusion.num_steps, spacing)

    def generate(
        self,
        num: int,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float = 0.0,
        seed: int = 0,
        spacing: str | None = None,
        labels: list[int] | torch.Tensor | np.ndarray | None = None,
        guidance: float | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        batch_size: int = 256,
        progress: bool = False,
        callback: Callback | None = None,
        return_tensor: bool = False,
        clip_denoised: bool | None = None,
        cuda_graph: bool | None = None,
    ) -> np.ndarray | torch.Tensor:
        """``num`` images as uint8 (N, H, W, C) (or float (N, C, H, W) in [-1, 1] with ``return_tensor``).

        ``labels`` is shorthand for ``model_kwargs={"labels": …}``; any other condition goes in ``model_kwargs``
        with one row per image; a conditional run given no labels draws class-balanced ones (0, 1, …, K−1 in turn).
        ``sampler`` (ddpm, ddim, dpm++2m, dpm++3m, unipc), its ``steps`` and timestep ``spacing`` (trailing, linspace,
        leading, logsnr, karras) default to what the run's preset recommends (the sampler of its grids: the mnist
        preset's is DDPM-50), a sampler other than the run's to its own defaults (ddim 50 trailing, dpm++2m 20, …);
        ``guidance`` (classifier-free, w) defaults to the run's ``train.sample_guidance`` when the images have
        labels, and ``clip_denoised`` (x̂_0 clipped to [-1, 1] at every step) to what the run was trained with. The
        initial noise comes from one generator seeded with ``seed`` and is drawn for all images up front, so the
        deterministic samplers (DDIM with η = 0, DPM-Solver++) give the same images whatever the batch size.
        ``cuda_graph`` replays the UNet from a CUDA graph (default: on with CUDA; see
        :class:`ddpmkit.sampling.CUDAGraphModelFn`).
        """
        if num < 1 or batch_size < 1:
            raise DdpmkitError(f"--num and --batch-size must be at least 1 (got {num} and {batch_size})")
        settings = self.sampler_settings(sampler, steps, eta, spacing)
        kwargs = dict(model_kwargs or {})
        if labels is None and self.num_classes is not None and "labels" not in kwargs:
            labels = self.balanced_labels(num)  # not the null label alone: that is the far weaker unconditional model
        if labels is not None:
            kwargs.update(self.label_kwargs(labels, num))
        if guidance is None and "labels" in kwargs:
            guidance = run_guidance(self.state)  # the run's recommendation (1 unless its preset says otherwise)
        if guidance is not None and guidance != 1.0 and not kwargs:
            raise DdpmkitError("guidance needs labels: pass the classes to generate (--labels)"
                               if self.num_classes else "this model is unconditional; drop --guidance")
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((num, *self.image_shape), generator=generator)
        use_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        outputs = []
        bar = tqdm(total=num, desc=f"{settings.sampler} {settings.steps}", unit="img", disable=not progress)
        for start in range(0, num, batch_size):
            chunk = noise[start:start + batch_size]
            chunk_kwargs = {k: v[start:start + batch_size] for k, v in kwargs.items()}
            images = sample(self.model, self.diffusion, chunk.shape, sampler=settings.sampler, steps=settings.steps,
                            eta=settings.eta, spacing=settings.spacing, model_kwargs=chunk_kwargs, guidance=guidance,
                            generator=generator, x_T=chunk, device=self.device, autocast_dtype=self.amp_dtype,
                            callback=callback, clip_denoised=clip_denoised, cuda_graph=use_graph)
            outputs.append(images.cpu())
            bar.update(len(chunk))
        bar.close()
        result = torch.cat(outputs).clamp(-1, 1)
        return result if return_tensor else to_uint8(result)
