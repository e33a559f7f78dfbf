"""``ddpmkit demo RUN``: a Gradio app to play with a trained run and to see how diffusion works: Generate, Edit
(a sketch into samples, inpainting what you paint over) and Learn.

``core`` computes (no Gradio needed, tested directly); ``canvas`` turns the editors' drawings into model inputs;
``app`` lays it out in Gradio; ``cli`` parses and checks.
"""

from .core import DemoModel, EditJob, EditResult, Explanation, GenerateResult, Preview, schedule_figure

__all__ = ["DemoModel", "EditJob", "EditResult", "Explanation", "GenerateResult", "Preview", "schedule_figure"]
