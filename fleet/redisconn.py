"""Open Redis clients from URLs (I/O): plain redis:// URLs, or redis+sentinel://h1:p1,h2:p2/service for
Redis Sentinel, where the client follows the primary across failovers."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlparse

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SOCKET_TIMEOUT_S = 2.0


def raise_if_cancelling(exc: BaseException) -> None:
    """redis-py can turn a task's cancellation into a ConnectionError; give the cancellation back."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


def connect(url: str, *, socket_timeout: float = SOCKET_TIMEOUT_S, replica: bool = False) -> aioredis.Redis:
    """A client for ``url``. With a sentinel URL, ``replica=True`` reads from a replica of the service."""
    parsed = urlparse(url)
    if parsed.scheme in ("redis+sentinel", "sentinel"):
        hosts = []
        for part in parsed.netloc.split("@")[-1].split(","):
            host, _, port = part.rpartition(":")
            hosts.append((host or "127.0.0.1", int(port or 26379)))
        service = parsed.path.strip("/").split("/")[0] or "mymaster"
        db = int(parse_qs(parsed.query).get("db", ["0"])[0])
        sentinel = Sentinel(
            hosts, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, db=db
        )
        client: aioredis.Redis
        if replica:
            client = sentinel.slave_for(service, socket_timeout=socket_timeout)
        else:
            client = sentinel.master_for(service, socket_timeout=socket_timeout)
        return client
    return aioredis.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, health_check_interval=5
    )
