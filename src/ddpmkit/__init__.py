"""ddpmkit: denoising diffusion (DDPM, DDIM, DPM-Solver++) from scratch in PyTorch, CPU-first.

>>> import ddpmkit as dk
>>> diffusion = dk.Diffusion(dk.NoiseSchedule.cosine(1000), prediction="v")
>>> model = dk.UNet(dk.UNetConfig.named("mnist"))
>>> loss = diffusion.loss(model, x0)                                       # doctest: +SKIP
>>> x = dk.sample(model, diffusion, (16, 1, 28, 28), sampler="ddim", steps=50)  # doctest: +SKIP
"""

from .diffusion import Diffusion, LossType, Prediction, Variance
from .errors import DdpmkitError
from .models import UNet, UNetConfig
from .run import RunFolder, RunInfo
from .sampling import SAMPLERS, SamplerStep, sample, timestep_spacing
from .schedule import NoiseSchedule
from .version import __version__


def __getattr__(name: str):
    """Heavier pieces load on first use (``dk.Pipeline``, ``dk.Trainer``, ``dk.RunConfig``)."""
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    if name == "Trainer":
        from .training import Trainer

        return Trainer
    if name == "SampleRequest":
        from .request import SampleRequest

        return SampleRequest
    if name == "RunConfig":
        from .config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'ddpmkit' has no attribute {name!r}")


__all__ = ["SAMPLERS", "DdpmkitError", "Diffusion", "LossType", "NoiseSchedule", "Pipeline", "Prediction", "RunConfig",
           "RunFolder", "RunInfo", "SampleRequest", "SamplerStep", "Trainer", "UNet", "UNetConfig", "Variance",
           "__version__", "sample", "timestep_spacing"]
