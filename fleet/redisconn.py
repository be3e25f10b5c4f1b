"""Open Redis clients from URLs (I/O): plain redis:// (or rediss://) URLs, or
redis+sentinel://[user:password@]h1:p1,h2:p2/service for Redis Sentinel, where the client follows the
primary across failovers. Credentials travel in the URL (or a file it names) and are never shown:
``redact`` is what any log line or error body gets instead. ``refusal`` names a server that answers but
refuses writes."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, unquote, urlparse, urlunparse

import redis.asyncio as aioredis
from pydantic import AfterValidator
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import OutOfMemoryError, ResponseError

SOCKET_TIMEOUT_S = 2.0
POOL_SIZE = 64  # connections per client: a burst beyond it waits for one instead of failing
POOL_WAIT_S = 2.0  # how long a burst waits for a free connection before "busy"

_USERINFO = re.compile(r"(?<=://)[^@/]*@")


SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "sentinel")


def check_url(url: str) -> str:
    """``url`` if it names a Redis (or Sentinel) server, else ValueError saying what is expected."""
    parsed = urlparse(url)
    if parsed.scheme not in SCHEMES or (parsed.scheme != "unix" and not parsed.hostname):
        raise ValueError(
            f"{redact(url)!r} is not a Redis URL: expected redis://[user:password@]host:port/db, rediss://…, "
            "unix://… or redis+sentinel://host:port,…/service"
        )
    return url


RedisURL = Annotated[str, AfterValidator(check_url)]  # a settings field holding a Redis URL


def redact(url: str) -> str:
    """``url`` with any user and password replaced: safe for logs, error bodies and /readyz."""
    return _USERINFO.sub("***@", url)


def raise_if_cancelling(exc: BaseException) -> None:
    """redis-py can turn a task's cancellation into a ConnectionError; give the cancellation back."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from exc


def refusal(exc: BaseException) -> str | None:
    """Why a Redis server that answers refuses writes, if that is what ``exc`` says: it is out of memory
    (maxmemory reached: the shipped store never evicts) or cannot persist (MISCONF: its AOF or snapshot
    cannot be written); None for any other error."""
    if isinstance(exc, OutOfMemoryError):
        return "out of memory (maxmemory reached; the store never evicts)"
    if isinstance(exc, ResponseError) and "MISCONF" in str(exc):
        return "unable to persist (MISCONF: its AOF or snapshot cannot be written)"
    return None


def connect(
    url: str,
    *,
    socket_timeout: float = SOCKET_TIMEOUT_S,
    replica: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> aioredis.Redis:
    """A client for ``url``. With a sentinel URL, ``replica=True`` reads from a replica of the service.
    ``username``/``password`` (from settings, e.g. injected from a secret store) apply when the URL has
    none."""
    parsed = urlparse(url)
    if (username or password) and "@" not in parsed.netloc:
        user = quote(username or "", safe="")
        url = urlunparse(parsed._replace(netloc=f"{user}:{quote(password or '', safe='')}@{parsed.netloc}"))
    if parsed.scheme in ("redis+sentinel", "sentinel"):
        return _sentinel_client(url, socket_timeout=socket_timeout, replica=replica)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=5,
    )
    return aioredis.Redis(connection_pool=pool)


def _sentinel_client(url: str, *, socket_timeout: float, replica: bool) -> aioredis.Redis:
    """The user and password in the URL are the data nodes' (the primary's and replicas'); a Sentinel that
    wants its own gives them as ``?sentinel_username=…&sentinel_password=…``."""
    parsed = urlparse(url)
    hosts = []
    for part in parsed.netloc.rpartition("@")[2].split(","):
        host, _, port = part.rpartition(":")
        hosts.append((host or "127.0.0.1", int(port or 26379)))
    service = parsed.path.strip("/").split("/")[0] or "mymaster"
    query = parse_qs(parsed.query)
    db = int(query.get("db", ["0"])[0])
    auth: dict[str, Any] = {}
    if parsed.username:
        auth["username"] = unquote(parsed.username)
    if parsed.password:
        auth["password"] = unquote(parsed.password)
    sentinel_auth = {
        key: query[f"sentinel_{key}"][0] for key in ("username", "password") if f"sentinel_{key}" in query
    }
    sentinel = Sentinel(
        hosts,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        db=db,
        sentinel_kwargs={"socket_timeout": socket_timeout, **sentinel_auth},
        **auth,
    )
    client: aioredis.Redis
    if replica:
        client = sentinel.slave_for(service, socket_timeout=socket_timeout)
    else:
        client = sentinel.master_for(service, socket_timeout=socket_timeout)
    return client
