"""Networks: the noise-prediction UNet and its configuration."""

from ddpmkit.models.unet import NAMED_CONFIGS, UNet, UNetConfig

__all__ = ["NAMED_CONFIGS", "UNet", "UNetConfig"]
