"""``ddpmkit demo RUN``: a Gradio app to play with a trained run and to see how diffusion works.

``core`` computes (no Gradio needed, tested directly); ``app`` lays it out in Gradio; ``cli`` parses and checks.
"""

from .core import DemoModel, Explanation, GenerateResult, Preview, schedule_figure

__all__ = ["DemoModel", "Explanation", "GenerateResult", "Preview", "schedule_figure"]
