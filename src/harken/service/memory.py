"""glibc's allocator, set for the engine's large short-lived buffers.

CTranslate2 takes every tensor from malloc. On whisper-base one encoder pass needs buffers of
tens of MB (a layer's attention scores alone: 8 heads × 1500² floats, 72 MB). glibc serves
anything over 32 MB with a fresh mmap and unmaps it when freed, and each worker thread's own
arena hands its free pages back as they free up, so every model call faults in and zeroes
hundreds of MB again: about 220,000 page faults a clip, a tenth of the CPU time spent in the
kernel. `keep_freed_memory` has glibc keep what was freed, in one heap, for the next call (as
jemalloc or tcmalloc would); `release_free_memory` hands it back to the system, which the
server does once it has been idle a while. Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Keep freed memory for reuse: one arena, no mmap per buffer, no trimming on free.

    Call it early, before the threads that will run the model exist (an arena is chosen for a
    thread when it first allocates). Returns whether glibc took the settings.
    """
    libc = _glibc()
    if libc is None:
        return False
    taken = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _INT_MAX),
        )
    )
    if not taken:
        log.warning("glibc refused the allocator settings; model calls will fault more pages")
    return taken


def release_free_memory() -> None:
    """Give the memory that is free back to the system (glibc's `malloc_trim`)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
