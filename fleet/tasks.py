"""Stop a component's background tasks: cancel each, and cancel again every ``RECANCEL_S`` those still
running — a library may swallow one cancel and carry on (redis-py's asyncio clients have been seen to) —
until all have ended or ``within_s`` has passed; any still running are logged and handed back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

log = logging.getLogger("meridian.tasks")

RECANCEL_S = 0.05


async def stop_tasks(tasks: Collection[asyncio.Task[Any]], within_s: float) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` until they end; returns those still running after ``within_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    running = {t for t in tasks if not t.done()}
    while running:
        for t in running:
            t.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, running = await asyncio.wait(running, timeout=min(RECANCEL_S, left))
    for t in running:  # shutting down goes on without them
        log.warning("background task %s did not stop within %.0f s", t.get_name(), within_s)
    return running
