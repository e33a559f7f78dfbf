"""Device and precision selection."""

from __future__ import annotations

import contextlib
import platform

import torch

from .errors import DdpmkitError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); without them oneDNN emulates bf16 and
    autocast is slower than fp32 (measured here on AVX-512 without BF16: a UNet step 2.1x slower)."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU in words, for the lines that quote a speed: "AMD EPYC (family 25 model 17; AVX-512, native bf16),
    2 threads". Model names alone do not tell Zen 3 from Zen 4, so family/model and the vector extensions that
    decide our speed are named. ``cpuinfo``: the text of /proc/cpuinfo (read when None; elsewhere: the platform)."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    extensions = ("AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags
                  else "AVX2" if "avx2" in flags else None)
    details = []
    if {"cpu family", "model"} <= fields.keys():
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    if extensions:
        details.append(extensions + (", native bf16" if flags & {"avx512_bf16", "amx_bf16"} else ""))
    details_text = f" ({'; '.join(details)})" if details else ""
    threads = torch.get_num_threads()
    return f"{name}{details_text}, {threads} thread{'' if threads == 1 else 's'}"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the hardware runs it natively (CUDA with bf16, a CPU with AVX512-BF16/AMX), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise DdpmkitError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if kind == "mps" and not mps_ok:
        raise DdpmkitError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    if kind not in ("cpu", "cuda", "mps"):
        raise DdpmkitError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def configure_backend(device: torch.device) -> None:
    """Process-wide settings for training on ``device``: on CUDA, cuDNN's autotuner (the shapes of a training
    run never change, so the fastest convolution algorithm is picked once per shape). Nothing on CPU or MPS."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision on a device (None means plain fp32)."""
    if precision not in PRECISIONS:
        raise DdpmkitError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type == "cpu":
            raise DdpmkitError("fp16 training needs a GPU (CUDA or MPS); on a CPU use --precision bf16 or fp32")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DdpmkitError("this GPU has no bf16; use --precision fp16 or fp32")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A torch.autocast context for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def randn(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None,
          device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` on the generator's own device, then moved to ``device``: a CPU
    generator gives the same numbers whatever device the tensors live on (no generator: drawn on ``device``)."""
    draw_on = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_on, dtype=dtype).to(device)
