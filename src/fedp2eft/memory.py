"""Keep freed tensor memory from staying in the process (glibc only; a no-op elsewhere).

glibc serves an allocation above its mmap threshold with its own mapping, returned to the system when
freed — but each such free *raises* the threshold (up to 32 MiB), so later model copies, optimiser
states and Flower records of a few MB to tens of MB land on the heap, where freed memory is kept.
With one deep copy of the base per client and method, a run's resident memory then grows to several
times what it uses at once (the quickstart: 7 GB). Fixing the threshold at 1 MiB (``mallopt``, which
also turns the adjustment off) keeps every tensor-sized block in its own mapping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 20


@functools.cache
def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold (once per process); True when it took effect. ``FEDP2EFT_KEEP_MALLOC=1``
    leaves glibc's default (``benchmarks/memory.py`` measures both)."""
    if os.environ.get("FEDP2EFT_KEEP_MALLOC") == "1":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False
