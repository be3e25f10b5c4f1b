"""Stopping background tasks: a task that swallows a cancel (as redis-py's clients have been seen to) is
cancelled again, so a shutdown does not sit out its whole bound; one that never stops is handed back."""

from __future__ import annotations

import asyncio
import contextlib

from fleet.tasks import stop_tasks


async def test_a_task_that_swallows_its_first_cancel_is_stopped_by_the_next() -> None:
    started = asyncio.Event()

    async def swallows_once() -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # a library's cleanup ate it ...
            await asyncio.sleep(3600)
        await asyncio.Event().wait()  # ... and it carries on, waiting on something else

    task = asyncio.create_task(swallows_once())
    await started.wait()
    assert await stop_tasks([task], within_s=30.0) == set()
    assert task.cancelled()


async def test_a_task_that_never_stops_is_handed_back_after_the_bound() -> None:
    async def stubborn() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_tasks([task], within_s=0.2) == {task}
    assert not task.done()
    task.get_coro().close()  # the test's own cleanup: end the coroutine
