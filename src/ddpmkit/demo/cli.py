"""``ddpmkit demo RUN [--host 127.0.0.1] [--port 7860] [--share]``: every check before the server starts."""

from __future__ import annotations

import errno
import importlib.util
import socket

from ..errors import DdpmkitError


def _parser():
    from ..cli import OneLineParser

    p = OneLineParser(prog="ddpmkit demo",
                      description="Serve a Gradio app for a trained run: generate with any sampler (and class and "
                                  "guidance on a conditional run), watch the denoising, and look inside the forward "
                                  "process. Needs the demo extra: pip install 'ddpmkit[demo]'.")
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to your network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    return p


def check_port(host: str, port: int) -> None:
    """A one-line error when ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    if not 1 <= port <= 65535:
        raise DdpmkitError(f"--port must be from 1 to 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            fix = ("pass another --port, or stop what is using it" if exc.errno == errno.EADDRINUSE else
                   "pass an address of this machine with --host (127.0.0.1, or 0.0.0.0 for every interface)")
            raise DdpmkitError(f"cannot serve on {host}:{port} ({exc.strerror}); {fix}") from None


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
