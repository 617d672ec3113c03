"""Heavy CPU work of one request runs off the event loop (docs/limits.md).

Parsing, validating, indexing and patching a small body takes well under a millisecond and stays
on the event loop (a thread hop costs more). A request whose body is large (`HEAVY_BYTES` or
more) is marked heavy when its body is read, and its CPU work then runs in a worker thread:
the interpreter switches threads every few milliseconds, so the event loop keeps answering
other clients meanwhile. At most `HEAVY_WORKERS` heavy steps run at once; the others wait
their turn without holding the event loop (and without each holding a parsed copy of a large
body at the same time).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from functools import partial
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

HEAVY_BYTES = 64 * 1024
HEAVY_WORKERS = 2

# Whether the current request carries a heavy body (set by the API layer as it reads it).
HEAVY: contextvars.ContextVar[bool] = contextvars.ContextVar("heavy_request", default=False)

# one per event loop (a test process runs several servers, each on its own loop)
_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("heavy_workers")

P = ParamSpec("P")
T = TypeVar("T")


def _workers() -> anyio.CapacityLimiter:
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(HEAVY_WORKERS)
        _LIMITER.set(limiter)
        return limiter


async def in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`func(...)` in a worker thread, always (the caller knows the work is heavy)."""
    return await anyio.to_thread.run_sync(partial(func, *args, **kwargs), limiter=_workers())


async def cpu(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`func(...)`: in a worker thread for a heavy request, inline otherwise."""
    if HEAVY.get():
        return await in_thread(func, *args, **kwargs)
    return func(*args, **kwargs)
