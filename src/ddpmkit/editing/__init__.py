"""Editing images with a trained model: inpainting (RePaint), image-to-image (SDEdit), DDIM inversion and
interpolation. The functions take the model and its diffusion; :class:`~ddpmkit.pipeline.Pipeline` has the same four
as methods over a run, with uint8 images and a :class:`~ddpmkit.request.SampleRequest`."""

from .methods import img2img, inpaint, interpolate, invert, reconstruct, repaint_path, slerp

__all__ = ["img2img", "inpaint", "interpolate", "invert", "reconstruct", "repaint_path", "slerp"]
