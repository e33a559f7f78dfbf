"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The device that tests taking the ``device`` fixture run on: cpu unless DDPMKIT_TEST_DEVICE names another, e.g.
# ``DDPMKIT_TEST_DEVICE=cuda python -m pytest -m "device or cuda"`` runs the device-capable tests on a GPU.
TEST_DEVICE = torch.device(os.environ.get("DDPMKIT_TEST_DEVICE", "cpu"))
if TEST_DEVICE.type == "cuda":
    # cuBLAS is deterministic only with a fixed workspace; read when its handle is made, so set before any CUDA work
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # comparisons with fp32 references need fp32 arithmetic: no TF32 in matmuls or convolutions in the tests
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def device() -> torch.device:
    """The device under test (DDPMKIT_TEST_DEVICE, default cpu); a missing accelerator fails rather than skips."""
    if TEST_DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("DDPMKIT_TEST_DEVICE=cuda but torch sees no CUDA GPU")
    if TEST_DEVICE.type == "mps" and not torch.backends.mps.is_available():
        pytest.fail("DDPMKIT_TEST_DEVICE=mps but MPS is not available")
    return TEST_DEVICE


def pytest_collection_modifyitems(config, items) -> None:
    """Tests that take the ``device`` fixture get the ``device`` marker; ``cuda`` tests skip without a GPU."""
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU machine: DDPMKIT_TEST_DEVICE=cuda)")
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(no_gpu)


def require_cached(present: bool | Path | str, what: str, fetch: str = "bash .ci/run") -> None:
    """Skip (outside CI) or fail (in CI, which fetches the data first) when a cached download is missing; ``fetch``
    is the command that fetches it (``ddpmkit data fetch NAME``, ``ddpmkit eval fetch``)."""
    ok = present if isinstance(present, bool) else Path(present).exists()
    if ok:
        return
    message = f"{what} is not in the cache; fetch it first (`{fetch}`)"
    if IN_CI:
        pytest.fail(message + " — CI's .ci/run should have fetched it")
    pytest.skip(message)


# Tests run tiny models, where a second thread buys nothing, and PyTorch's OpenMP barriers stall badly when another
# process holds the other core (measured here: a tiny UNet step 64 ms on 1 thread, 5 s on 2 under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _backend_flags_restored():
    """A Trainer turns on cuDNN autotuning for its process; the next test starts with the flag as it was."""
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = benchmark
