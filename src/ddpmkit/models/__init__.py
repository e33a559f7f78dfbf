"""Networks: the noise-prediction UNet and its configuration (named sizes: ``ddpmkit.presets``)."""

from ddpmkit.models.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
