"""Process-wide C allocator settings for a process that moves bulk data.

Every megabyte-sized block, Noise frame batch and message buffer Python allocates comes from
glibc's malloc. With its defaults, a freed buffer of that size is handed back to the kernel
(``munmap``, or the heap top trimmed) and the next one is faulted in again page by page: in a
1 GiB get that was 40-80 page faults per MiB on the leecher and a sixth of its event loop's CPU.
Keeping freed memory for reuse (trim threshold 32 MiB, heap grown 16 MiB at a time) and serving
allocations below 4 MiB from the heap (a fixed mmap threshold) brought that to ~5 faults per MiB;
the price is up to ~48 MiB of freed memory kept by the process instead of returned.

This changes the whole process, so the library never does it on its own: the ``peerstack``
command calls it at start, and a program that embeds a node may call it too.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 32 << 20
TOP_PAD = 16 << 20
MMAP_THRESHOLD = 4 << 20


def tune_for_bulk_transfers() -> bool:
    """Apply the settings above to this process's glibc malloc. False where there is no glibc
    (another C library, another OS: nothing changed) or it refused one of the settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The process's own symbols, libc's among them: no library search at every start
        # (ctypes.util.find_library runs ldconfig, ~1.4 ms).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: musl has no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
    )
    # mallopt returns 1 on success; the three only help together, so report any refusal.
    return all(mallopt(param, value) == 1 for param, value in settings)


__all__ = ["MMAP_THRESHOLD", "TOP_PAD", "TRIM_THRESHOLD", "tune_for_bulk_transfers"]
