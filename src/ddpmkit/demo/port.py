"""Whether the demo can serve on an address: checked before Gradio loads and before any weights do."""

from __future__ import annotations

import errno
import socket

from ..errors import DdpmkitError


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
