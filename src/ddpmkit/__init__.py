"""ddpmkit: denoising diffusion (DDPM, DDIM, DPM-Solver++) from scratch in PyTorch, CPU-first.

>>> import ddpmkit as dk
>>> diffusion = dk.Diffusion(dk.NoiseSchedule.cosine(1000), prediction="v")
>>> model = dk.UNet(dk.UNetConfig.named("mnist"))
>>> loss = diffusion.loss(model, x0)                                       # doctest: +SKIP
>>> x = dk.sample(model, diffusion, (16, 1, 28, 28), sampler="ddim", steps=50)  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .diffusion import Diffusion, LossType, Prediction, Variance  # noqa: E402
from .errors import DdpmkitError  # noqa: E402
from .models import UNet, UNetConfig  # noqa: E402
from .run import RunFolder  # noqa: E402
from .sampling import SamplerStep, ddim, ddpm, dpmpp_2m, sample, timestep_spacing  # noqa: E402
from .schedule import NoiseSchedule  # noqa: E402


def __getattr__(name: str):
    """Heavier pieces load on first use (``dk.Pipeline``, ``dk.Trainer``, ``dk.RunConfig``)."""
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    if name == "Trainer":
        from .training import Trainer

        return Trainer
    if name == "RunConfig":
        from .config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'ddpmkit' has no attribute {name!r}")


__all__ = ["DdpmkitError", "Diffusion", "LossType", "NoiseSchedule", "Pipeline", "Prediction", "RunConfig", "RunFolder",
           "SamplerStep", "Trainer", "UNet", "UNetConfig", "Variance", "ddim", "ddpm", "dpmpp_2m", "sample",
           "timestep_spacing"]
