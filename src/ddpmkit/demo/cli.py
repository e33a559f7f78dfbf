"""``ddpmkit demo RUN [--host 127.0.0.1] [--port 7860] [--share]``: every check before the server starts."""

from __future__ import annotations

import importlib.util

from ..errors import DdpmkitError
from .port import check_port


def _parser():
    from ..cli_args import OneLineParser

    p = OneLineParser(prog="ddpmkit demo",
                      description="Serve a Gradio app for a trained run: generate with any sampler (and class and "
                                  "guidance on a conditional run), watch the denoising, turn a sketch into samples, "
                                  "inpaint, and look inside the forward process. Needs the demo extra: "
                                  "pip install 'ddpmkit[demo]'.")
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to your network)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="the model's arithmetic: auto (default: bf16 where the hardware runs it natively, fp16 on "
                        "an older CUDA GPU, else fp32), bf16, fp16 (GPU only) or fp32")
    return p


def demo_main(argv: list[str]) -> int:
    """Checks in order of cost (the run is found, the port is free, Gradio is there, the weights load), then serves."""
    from ..run import RunFolder

    args = _parser().parse_args(argv)
    RunFolder.locate(args.run)  # a missing run or one without checkpoints: refused before anything starts
    check_port(args.host, args.port)
    if importlib.util.find_spec("gradio") is None:
        raise DdpmkitError("the demo needs Gradio, which is not installed: pip install 'ddpmkit[demo]'")
    from .app import launch
    from .core import DemoModel

    model = DemoModel.from_run(args.run, device=args.device, precision=args.precision)
    launch(model, host=args.host, port=args.port, share=args.share)
    return 0
