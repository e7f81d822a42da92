"""Work spread over a few threads, its results kept in order and few in memory at once."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def worker_count(cap: int = 4) -> int:
    """Threads for CPU work that releases the GIL: the cores, at most `cap`."""
    return max(1, min(cap, os.cpu_count() or 1))


def in_order(pool: ThreadPoolExecutor, work: Callable[[T], R], items: Iterable[T],
             ahead: int) -> Iterator[R]:
    """work(item) for each item, run on `pool`, yielded in order; at most `ahead` + 1 pending.

    Unlike `pool.map`, items are submitted only as results are taken, so memory holds a few
    results at a time while the threads stay busy.
    """
    pending: collections.deque[Future[R]] = collections.deque()
    for item in items:
        pending.append(pool.submit(work, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
