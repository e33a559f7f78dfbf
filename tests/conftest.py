"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_cached(present: bool | Path | str, what: str) -> None:
    """Skip (outside CI) or fail (in CI, which fetches the data first) when a cached download is missing."""
    ok = present if isinstance(present, bool) else Path(present).exists()
    if ok:
        return
    message = f"{what} is not in the cache; fetch it first (e.g. `ddpmkit data fetch mnist`)"
    if IN_CI:
        pytest.fail(message + " — CI's .ci/run should have fetched it")
    pytest.skip(message)


# Tests run tiny models, where a second thread buys nothing, and PyTorch's OpenMP barriers stall badly when another
# process holds the other core (measured here: a tiny UNet step 64 ms on 1 thread, 5 s on 2 under load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
