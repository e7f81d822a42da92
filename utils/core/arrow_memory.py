"""The Arrow memory pool the local engine's stages allocate from."""

from __future__ import annotations

import contextlib
import os

import pyarrow as pa

POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
# How long jemalloc keeps freed pages before handing them back to the kernel.
DECAY_MS = 5_000


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
