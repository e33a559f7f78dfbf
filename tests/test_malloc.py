"""The CLI's glibc allocator setting: freed activation-sized blocks are reused instead of page-faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ddpmkit.malloc import keep_freed_memory

# A training step's pattern: activations of a few sizes pile up (forward), then are all freed (backward), 40 times;
# minor page faults are counted in a fresh interpreter each time so the process-wide setting under test does not
# leak into (or from) the test process. The "base" arm pins glibc's documented defaults (mmap and trim thresholds
# 128 KiB): left alone, glibc adapts the thresholds as blocks are freed, and the same loop then faults anywhere
# from 0 to 375,000 times from one interpreter to the next (measured here) — the default MNIST job averaged
# 41,000 faults a step.
SCRIPT = """
import ctypes, resource, sys, torch
if sys.argv[1] == "keep":
    from ddpmkit.malloc import keep_freed_memory
    assert keep_freed_memory()
else:
    from ddpmkit.malloc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    libc = ctypes.CDLL(None)
    assert libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1
def step():
    saved = [torch.ones(n) for n in (5_000_000, 2_000_000, 5_000_000, 1_000_000, 5_000_000, 3_000_000)]
    del saved  # 84 MB written, then freed
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_blocks_are_reused_instead_of_page_faulted_again():
    base, keep = faults("base"), faults("keep")
    pages_written = 40 * 21_000_000 * 4 // 4096
    # glibc's base thresholds: blocks go back to the OS when freed and every page faults again on the next step
    assert base > 0.5 * pages_written, (base, keep)
    # with the setting, freed blocks are reused: (almost) nothing faults after warm-up (measured here: 0)
    assert keep < 0.01 * pages_written, (base, keep)


def test_returns_whether_it_applied():
    assert keep_freed_memory() is sys.platform.startswith("linux")
