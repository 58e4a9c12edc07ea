"""asyncio helpers.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation when the awaited thing finishes in
the same turn the task is cancelled; a loop built on it then never stops (we saw the dispatcher
hang on shutdown that way). `asyncio.timeout` has no such race, so every timed wait goes here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def wait(aw: Awaitable[object], seconds: float | None) -> bool:
    """Awaits `aw` for at most `seconds`; False if the time ran out."""
    try:
        async with asyncio.timeout(seconds):
            await aw
    except TimeoutError:
        return False
    return True


async def within(aw: Awaitable[T], seconds: float | None) -> T:
    """`await aw`, raising TimeoutError after `seconds` (wait_for without the race)."""
    async with asyncio.timeout(seconds):
        return await aw


_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """create_task, holding a reference until the task ends (the loop keeps only a weak one, so
    an unreferenced task can be garbage-collected mid-flight)."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task
