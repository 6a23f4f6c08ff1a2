"""peerstack.allocator: the glibc malloc settings take effect (in a child process: they are
process-wide, so the test process itself is left alone)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Mixed megabyte-sized buffers, each touched page by page, a few kept alive: the allocation
# pattern of blocks and message buffers. Prints the minor page faults per allocation.
_CHILD = """
import resource, sys
from peerstack.allocator import tune_for_bulk_transfers
if sys.argv[1] == "tuned":
    assert tune_for_bulk_transfers()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
sizes = [(1 << 20) + 37, 3 * 65536, 2 * (1 << 20) - 5, 300_000]
keep = []
start = faults()
for i in range(400):
    buf = bytearray(sizes[i % 4])
    buf[::4096] = b"\\1" * len(buf[::4096])
    keep.append(buf)
    if len(keep) > 5:
        keep.pop(0)
print((faults() - start) / 400)
"""


def _faults_per_allocation(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_faults_in_fewer_fresh_pages() -> None:
    default = _faults_per_allocation("default")
    tuned = _faults_per_allocation("tuned")
    # Freed buffers are reused instead of handed back and faulted in again.
    assert tuned < default * 0.75, (tuned, default)


def test_the_command_line_tunes_its_process() -> None:
    code = (
        "import peerstack.cli.main as m, peerstack.allocator as a\n"
        "calls = []\n"
        "m.tune_for_bulk_transfers = lambda: calls.append(1) or a.tune_for_bulk_transfers()\n"
        "try:\n"
        "    m.main(['id', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(len(calls))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip().endswith("1")
