"""glibc malloc settings for a long-running server, so that its RSS follows what is in use.

By default glibc gives each thread that allocates its own arena (up to 8 per core) and
raises its mmap threshold to the largest block freed so far (up to 32 MiB), so after a
burst of large buffers (256 KiB socket reads, replies to slow readers, batched tensors)
freed memory stays in the heaps, fragmented, and RSS only rises. :func:`tune_allocator`
caps the arenas at ``ARENA_MAX`` and fixes the mmap threshold at ``MMAP_THRESHOLD``, so a
large buffer is mapped for itself and unmapped when freed; :func:`release_free_memory`
hands freed heap pages back (the bridge calls it every few seconds). In the soak benchmark
(docs/benchmarks.md, session 10, against glibc's defaults in the same session) the settings
took the server's peak RSS under attack from 743.5 to 731.0 MB. Elsewhere (musl, macOS, Windows) both are no-ops. A ``MALLOC_*`` environment
variable or ``GLIBC_TUNABLES`` set by the operator wins: nothing is changed then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ARENA_MAX = 2  # malloc arenas shared by all threads (the event loop, the forward, write-back)
MMAP_THRESHOLD = 64 << 10  # blocks at least this large are mmapped and unmapped on free
TRIM_THRESHOLD = 1 << 20  # free bytes at the top of a heap past which it is shrunk

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # from glibc's malloc.h
_OPERATOR_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc
        return None


_libc = _glibc()


def tune_allocator() -> bool:
    """Apply the settings above (best called before the server starts its threads). Returns
    whether they were applied: False off glibc or when the operator set malloc's own variables."""
    if _libc is None or any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    settings = ((_M_ARENA_MAX, ARENA_MAX), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return all(_libc.mallopt(option, value) == 1 for option, value in settings)


def release_free_memory() -> None:
    """glibc's malloc_trim(0): return free heap pages to the OS. ctypes releases the GIL for
    the call, so it runs beside the event loop."""
    if _libc is not None:
        _libc.malloc_trim(0)
