"""The memory the local engine's stages allocate from: Arrow's pool, and the C heap numpy uses.

The stages allocate and free buffers of tens to hundreds of MB thousands of times. Memory
handed back to the kernel comes back as fresh pages, which the kernel zeroes on first touch:
with the default settings that zeroing was the largest single cost of denormalize, which
therefore keeps freed memory for reuse until its process exits (`keep_freed_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

import pyarrow as pa

POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
# How long jemalloc keeps freed pages before handing them back to the kernel (-1: never).
DECAY_MS = 5_000
KEEP_DECAY_MS = -1
# glibc mallopt(3) options and the values set: no allocation gets its own mapping (large
# arrays come from the heap and go back to it), and the heap is trimmed only past 2 GiB free.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
HEAP_SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))


def prefer_jemalloc() -> str:
    """Allocate Arrow buffers from jemalloc when this pyarrow has it; return the pool in use.

    Reading and formatting gigabytes in large buffers, the default mimalloc pool spent several
    times more time in the kernel than jemalloc (it hands freed pages back and faults them in
    again). A pool chosen through ARROW_DEFAULT_MEMORY_POOL is left alone.
    """
    if os.environ.get(POOL_ENV):
        return pa.default_memory_pool().backend_name
    # A pyarrow built without jemalloc keeps its default pool.
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        # Arrow sets jemalloc to return freed pages at once; batch after batch of lines of the
        # same size then faults them in again. Kept a few seconds, they are reused.
        pa.jemalloc_set_decay_ms(DECAY_MS)
    return pa.default_memory_pool().backend_name


def keep_freed_memory() -> bool:
    """Keep freed memory for reuse until the process exits: jemalloc (when it is Arrow's pool)
    never purges, and glibc's malloc serves large arrays from its heap and keeps it; whether
    glibc's was set (glibc only).

    By default glibc maps every allocation above 32 MiB on its own and unmaps it when freed,
    so each temporary array of a column faults in freshly zeroed pages.
    """
    if pa.default_memory_pool().backend_name == "jemalloc":
        pa.jemalloc_set_decay_ms(KEEP_DECAY_MS)
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(option, value) == 1 for option, value in HEAP_SETTINGS)
