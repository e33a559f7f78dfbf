"""Exchanging runs with other libraries: diffusers pipelines out, diffusers UNet2DModels in (:mod:`.diffusers`)."""

from .diffusers import export_run, import_unet2d, parameter_names, unet2d_config, unet_config_from

__all__ = ["export_run", "import_unet2d", "parameter_names", "unet2d_config", "unet_config_from"]
