"""The process's memory allocator: a tensor-friendly one when the system has it, and freed memory given
back between clients when it does not.

PyTorch's CPU tensors come from ``malloc``. With glibc's allocator a client's training leaves hundreds
of MB of freed activation memory fragmented in the heap (measured by ``benchmarks/memory.py``: one
LoRA client of e5-small peaks at 2.2 GB with glibc, 1.37 GB with tcmalloc, at about the same speed:
0.94-1.10x per client, 0.86x for the quickstart; fixing glibc's mmap threshold at 1 MiB matches
tcmalloc's memory but makes training 1.5x slower, because every activation then costs fresh page
faults). An allocator can only be chosen before the
process starts, so the ``fedp2eft`` command re-executes itself once with ``LD_PRELOAD`` naming
tcmalloc (Debian/Ubuntu ``libtcmalloc-minimal4``) or else jemalloc (``libjemalloc2``) when one is
installed (``preload_allocator``). ``FEDP2EFT_ALLOCATOR`` = ``auto`` (default) | ``tcmalloc`` |
``jemalloc`` | ``system`` (leave the process as started). Processes that fedp2eft does not start
(SuperNodes, Ray workers) get one through ``LD_PRELOAD`` in their environment (README).

``trim_freed_memory`` gives the freed pages back between clients, rounds and stages, under each of
the three allocators (between clients and rounds only when hundreds of MB are free; never per step).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys

ENV = "FEDP2EFT_ALLOCATOR"
_PREFERENCE = {"tcmalloc": "libtcmalloc_minimal.so*", "jemalloc": "libjemalloc.so*"}
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib", "/opt/homebrew/lib")
_REEXEC_MARK = "FEDP2EFT_ALLOCATOR_PRELOADED"


def allocator_in_use() -> str:
    """``tcmalloc``, ``jemalloc`` or ``system``: which allocator this process's ``malloc`` is."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return "system"
    for name in _PREFERENCE:
        if f"lib{name}" in text:
            return name
    return "system"


def find_allocator(choice: str = "auto") -> str | None:
    """The shared library of the chosen allocator (``auto``: tcmalloc, then jemalloc), or None."""
    names = list(_PREFERENCE) if choice == "auto" else [choice]
    for name in names:
        for folder in _LIB_DIRS:
            hits = sorted(glob.glob(os.path.join(folder, _PREFERENCE[name])))
            if hits:
                return hits[0]
    return None


def preload_allocator() -> None:
    """Re-execute this command once with a tcmalloc/jemalloc ``LD_PRELOAD`` (Linux; see the module
    docstring). Returns when nothing is to be done: the allocator is already in, the user chose
    ``system``, none is installed, or this is the re-executed process."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "system", *_PREFERENCE):
        raise SystemExit(f"error: {ENV}={choice!r}: must be auto, tcmalloc, jemalloc or system")
    if (choice == "system" or not sys.platform.startswith("linux") or os.environ.get(_REEXEC_MARK)
            or allocator_in_use() != "system"):
        return
    library = find_allocator(choice)
    if library is None:
        if choice != "auto":
            print(f"warning: {ENV}={choice}: library not found; using the system allocator", file=sys.stderr)
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(x for x in (library, env.get("LD_PRELOAD", "")) if x)
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return  # cannot re-execute (unusual interpreter set-up): run with the system allocator


@functools.cache
def _release_function():
    """The call that gives an allocator's freed pages back to the system, or None."""
    try:
        process = ctypes.CDLL(None)  # the symbols this process resolves, the preloaded allocator's first
    except OSError:
        return None
    name = allocator_in_use()
    if name == "tcmalloc" and hasattr(process, "MallocExtension_ReleaseFreeMemory"):
        return process.MallocExtension_ReleaseFreeMemory
    if name == "jemalloc" and hasattr(process, "mallctl"):
        purge = b"arena.4096.purge"  # MALLCTL_ARENAS_ALL
        return lambda: process.mallctl(purge, None, None, None, ctypes.c_size_t(0))
    if name == "system" and hasattr(process, "malloc_trim"):
        return lambda: process.malloc_trim(ctypes.c_size_t(0))
    return None


class _MallInfo2(ctypes.Structure):  # glibc >= 2.33's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def freed_bytes() -> int | None:
    """Bytes the allocator holds freed and not yet given back, where it says so cheaply (tcmalloc's page
    heap, glibc's ``mallinfo2``), else None."""
    probe = _freed_bytes_function()
    return None if probe is None else probe()


@functools.cache
def _freed_bytes_function():
    """The call behind ``freed_bytes``, found once (``allocator_in_use`` reads ``/proc/self/maps``, ~10 ms in a
    process with a model loaded), or None."""
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return None
    name = allocator_in_use()
    if name == "tcmalloc" and hasattr(process, "MallocExtension_GetNumericProperty"):
        def tcmalloc_free() -> int | None:
            value = ctypes.c_size_t(0)
            ok = process.MallocExtension_GetNumericProperty(b"tcmalloc.pageheap_free_bytes", ctypes.byref(value))
            return value.value if ok else None
        return tcmalloc_free
    if name == "system" and hasattr(process, "mallinfo2"):
        process.mallinfo2.restype = _MallInfo2
        return lambda: process.mallinfo2().fordblks
    return None


# freed memory below these stays with the allocator for what comes next: the next client of a stage reuses
# its predecessor's memory (an e5-small full-fine-tuning client frees ~690 MB, all reused by the next), so a
# ClientApp gives back only beyond what any client here frees (a SuperNode or Ray worker serves many clients
# over its life); between rounds (evaluation, aggregation and checkpoints differ) and personalised clients
# (methods differ), from 256 MiB (an e5-small round frees ~420 MB)
CLIENT_TRIM_BYTES, ROUND_TRIM_BYTES = 1 << 30, 256 << 20


def trim_freed_memory(at_least: int = 0) -> None:
    """Give the allocator's freed pages back to the system between clients, rounds and stages (glibc's
    ``malloc_trim``, tcmalloc's ``ReleaseFreeMemory``, jemalloc's purge; a no-op elsewhere): what one
    client freed then never adds to the next one's peak. With ``at_least``, only when the allocator holds
    that many freed bytes (where it can tell: ``freed_bytes``). The call itself takes milliseconds; what
    costs is faulting the given-back pages in again: a tiny-bert client of ``benchmarks/engine_overhead.py``
    frees 150-280 MB, and giving it back after every client made the engine's rounds ~0.7 s per client
    slower. Memory that the next client reuses is kept (``CLIENT_TRIM_BYTES``, ``ROUND_TRIM_BYTES``)."""
    release = _release_function()
    if release is None:
        return
    if at_least:
        freed = freed_bytes()
        if freed is not None and freed < at_least:
            return
    release()


MADV_PAGEOUT = 21  # Linux >= 5.4


def _file_mappings() -> list[tuple[int, int]]:
    """``(start, end)`` of this process's memory mappings that map a file (``/proc/self/maps``), sorted."""
    spans = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    lo, hi = parts[0].split("-")
                    spans.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return sorted(spans)


def release_file_pages(tensors) -> int:
    """Let the kernel reclaim the resident pages of those ``tensors`` that map a file: a model's weights
    memory-mapped from its safetensors file and read once in full (a fingerprint, a save) otherwise stay
    resident, e.g. all 250,037 rows of e5-small's embedding table (384 MB) where training uses the rows of
    its data's tokens. ``madvise(MADV_PAGEOUT)`` (Linux >= 5.4) keeps contents: a page used again is read
    back from the file, and memory that maps no file (trained or copied tensors) is not touched. Returns
    the bytes advised; 0 where the call is unavailable."""
    import bisect
    import mmap

    spans = _file_mappings()
    if not spans:
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page, done, seen = mmap.PAGESIZE, 0, set()
    starts = [s for s, _ in spans]
    for t in tensors:
        storage = t.untyped_storage()
        addr, size = storage.data_ptr(), storage.nbytes()
        if addr in seen or size < page:
            continue
        seen.add(addr)
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or addr + size > spans[i][1]:
            continue  # not inside one file mapping
        lo, hi = -(-addr // page) * page, (addr + size) // page * page
        if hi > lo and madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
            done += hi - lo
    return done
