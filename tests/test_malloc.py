"""The CLI's glibc allocator setting: freed activation-sized blocks are reused instead of page-faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ddpmkit.malloc import keep_freed_memory

# Allocate and free a 20 MB tensor 30 times and count minor page faults; in a fresh interpreter each time so the
# process-wide setting under test does not leak into (or from) the test process.
SCRIPT = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from ddpmkit.malloc import keep_freed_memory
    assert keep_freed_memory()
for _ in range(3):
    torch.ones(5_000_000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    torch.ones(5_000_000)  # 20 MB, written in full, then freed
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_blocks_are_reused_instead_of_page_faulted_again():
    default, keep = faults("default"), faults("keep")
    pages = 30 * 20_000_000 // 4096  # 146,484 pages of 4 KiB written in all
    # glibc's default gives blocks back to the OS and faults them in again (measured here: ~34,000 faults)
    assert default > 0.1 * pages
    # with the setting, at most a block's first touch or two as the heap grows (measured: 0 or 4,882)
    block = 20_000_000 // 4096 + 1
    assert keep <= 2 * block and keep < default / 3, (default, keep)


def test_returns_whether_it_applied():
    assert keep_freed_memory() is sys.platform.startswith("linux")
