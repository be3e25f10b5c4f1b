"""The upstream leg (I/O): a keep-alive HTTP/1.1 connection pool to regional replicas on asyncio protocols,
responses parsed by httptools (llhttp), bodies handed on as the bytes that arrived (no copies, no re-encoding)
with read-side flow control.

Why not aiohttp's ClientSession here: on this path it costs ~150 µs of CPU per request (a naive aiohttp
reverse proxy does 0.07x nginx's req/s; the same aiohttp server with this pool does 0.34x, `bench/proxy`).
The pool does only what a reverse proxy needs: one request per connection at a time, Content-Length request
bodies, chunked or sized or close-delimited responses, connect and idle-read timeouts, a connection limit.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

HIGH_WATER = 256 * 1024  # stop reading from the region when this much body is waiting for a slow client
LOW_WATER = 64 * 1024


def encode_header_text(text: str) -> bytes:
    """Header text back to the bytes a client sent (aiohttp decodes them as UTF-8 with surrogateescape):
    no header value can fail to encode, and none is re-encoded into different bytes."""
    return text.encode("utf-8", "surrogateescape")


class UpstreamError(ConnectionError):
    """The region's connection failed or broke off (before or during the response)."""


class UpstreamProtocolError(UpstreamError):
    """The region sent something that is not HTTP/1.1."""


class _Conn(asyncio.Protocol):
    """One connection to a replica; carries one exchange at a time."""

    __slots__ = (
        "_head",
        "_header_list",
        "closed",
        "idle_since",
        "loop",
        "origin",
        "parser",
        "pool",
        "response",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, origin: tuple[str, int]) -> None:
        self.pool = pool
        self.origin = origin
        # asyncio.get_running_loop() costs a getpid() system call on Python 3.11: look it up once
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.response: UpstreamResponse | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._header_list: list[tuple[str, str]] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost()
        resp = self.response
        if resp is not None and not resp.complete and exc is None and resp.close_delimited:
            resp._finish()  # a body without length or chunking ends when the region closes
            return
        err = UpstreamError(
            f"connection to {self.origin[0]}:{self.origin[1]} closed{f': {exc}' if exc else ''}"
        )
        if self._head is not None and not self._head.done():
            self._head.set_exception(err)
        if resp is not None and not resp.complete:
            resp._fail(err)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # pragma: no cover - we never ask for an upgrade
            self._protocol_error("unexpected upgrade")
        except httptools.HttpParserError as exc:
            self._protocol_error(str(exc))
        resp = self.response
        if resp is not None and resp._held:  # what this read brought, to ``pump``'s sink in one piece
            resp._flush()

    def _protocol_error(self, why: str) -> None:
        err = UpstreamProtocolError(f"bad response from {self.origin[0]}:{self.origin[1]}: {why}")
        if self._head is not None and not self._head.done():
            self._head.set_exception(err)
        if self.response is not None:
            self.response._fail(err)
        self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx interim responses: wait for the final one
            self._header_list = []
            return
        resp = UpstreamResponse(self, status, CIMultiDict(self._header_list))
        self._header_list = []
        self.response = resp
        if self._head is not None and not self._head.done():
            self._head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is None:  # end of a 1xx
            return
        resp.keep_alive = self.parser.should_keep_alive()
        resp._finish()

    # ours
    def send(self, head: bytes, body: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._head = self.loop.create_future()
        self.response = None
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return self._head

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """Status and headers of a region's response; the body is read as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_error",
        "_handed_back",
        "_held",
        "_idle_s",
        "_last",
        "_more",
        "_paused",
        "_released",
        "_sink",
        "_sink_error",
        "_waiter",
        "_watchdog",
        "complete",
        "content_length",
        "content_type",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self, conn: _Conn, status: int, headers: CIMultiDict[str]) -> None:
        self.status = status
        self.headers = headers
        raw = headers.get("Content-Type")  # both read once: the forwarder asks several times a request
        self.content_type = raw.partition(";")[0].strip().lower() if raw else "application/octet-stream"
        raw = headers.get("Content-Length")
        self.content_length = int(raw) if raw is not None and raw.isdigit() else None
        self.keep_alive = False
        self.complete = False
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False
        self._idle_s: float | None = None
        self._last = 0.0  # when body last arrived (the idle timeout's watchdog reads it)
        self._watchdog: asyncio.TimerHandle | None = None
        self._sink: Callable[[bytes], bool] | None = None  # ``pump``'s: each read's pieces go to it
        self._held = b""  # a read's body for the sink, until the read has all been parsed: its first
        self._more: list[bytes] = []  # piece, and the rest (joined once, not piece by piece)
        self._sink_error: BaseException | None = None
        self._handed_back = False  # the sink asked for the pumping task
        self._released = False

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read."""
        return self._buffered

    @property
    def close_delimited(self) -> bool:
        te = self.headers.get("Transfer-Encoding", "")
        return "Content-Length" not in self.headers and "chunked" not in te.lower()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._last = time.monotonic()
        if self._sink is not None:  # ``pump``: for its sink when this read is parsed (one write per read)
            if self._held:
                self._more.append(data)
            else:
                self._held = data
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def _flush(self) -> None:
        """The end of a read from the region: its pieces to ``pump``'s sink, in one piece (as nginx writes
        what one read brought in one write), straight from this callback: no buffer, no task switch."""
        sink = self._sink
        if sink is None:  # pragma: no cover - held only while a sink is set, flushed in the same callback
            self._keep_held()
            return
        data = self._take_held()
        try:
            handed_back = sink(data)
        except Exception as exc:  # the pumping task raises it
            self._sink_error, handed_back = exc, True
        if handed_back:
            self._sink, self._handed_back = None, True
            self._wake()

    def _keep_held(self) -> None:
        """The body ended or broke off in the read being parsed: its pieces wait for the pumping task (the
        end of a stream goes out with the stream's last write)."""
        if self._held:
            data = self._take_held()
            self._chunks.append(data)
            self._buffered += len(data)

    def _take_held(self) -> bytes:
        data, self._held = self._held, b""
        if self._more:
            data = b"".join((data, *self._more))
            self._more.clear()
        return data

    def _finish(self) -> None:
        self._keep_held()
        self.complete = True
        self._unwatch()
        self._wake()

    def _watch(self) -> None:
        """The idle timeout's one timer per silence, not one per piece of body: when it fires, the read
        waiting fails if the region has been silent ``_idle_s``, else the timer is set for the rest."""
        self._watchdog = None
        waiter, idle_s = self._waiter, self._idle_s
        if waiter is None or waiter.done() or idle_s is None:  # not waiting: the next wait sets it again
            return
        silent = time.monotonic() - self._last
        if silent >= idle_s:
            _expire(waiter)
        else:
            self._watchdog = self._conn.loop.call_later(idle_s - silent, self._watch)

    def _arm(self) -> None:
        """A read starts waiting: the idle timeout's watchdog set, unless one already runs (silence counts
        from this wait at the earliest)."""
        if self._idle_s is not None and self._watchdog is None:
            self._last = time.monotonic()
            self._watchdog = self._conn.loop.call_later(self._idle_s, self._watch)

    def _unwatch(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _fail(self, exc: BaseException) -> None:
        self._keep_held()
        if self._error is None:
            self._error = exc
        self._wake()

    async def readany(self, within_s: float | None = None) -> bytes:
        """The next piece of body as it arrived; b"" at the end. UpstreamError if cut off, TimeoutError when
        the region stays silent longer than ``within_s`` (default: the idle timeout)."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            loop = self._conn.loop
            waiter = self._waiter = loop.create_future()
            timer = None
            if within_s is not None:
                timer = loop.call_later(within_s, _expire, waiter)
            else:
                self._arm()
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self._take()

    def _take(self) -> bytes:
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._paused and self._buffered < LOW_WATER and self._conn.transport is not None:
            self._paused = False
            self._conn.transport.resume_reading()
        return data

    async def pump(self, sink: Callable[[bytes], bool]) -> bytes | None:
        """The body to ``sink`` as it arrives, what each read from the region brought in one piece, called
        from the connection's own callback: no buffer, no future and no task switch per piece (a stream's
        relay, event by event). When the body has ended: the pieces that came with its end, not given to
        ``sink`` (the caller writes them with its own end: one write); None when ``sink`` returned True (it
        needs the task: a slow client, a deadline), and later pieces wait here until ``pump`` or
        ``readany`` is called again. What ``sink`` raises, the region's errors and the idle timeout are
        raised here."""
        while True:
            if self.complete:
                return self._rest()
            while self._chunks:  # what arrived while nobody pumped goes first, in order
                if sink(self._take()):
                    return None
            if self._error is not None:
                raise self._error
            waiter = self._waiter = self._conn.loop.create_future()
            self._arm()
            self._sink = sink
            try:
                await waiter
            finally:
                self._sink = self._waiter = None
            handed_back, self._handed_back = self._handed_back, False
            if self._sink_error is not None:
                exc, self._sink_error = self._sink_error, None
                raise exc
            if handed_back:
                return None

    def _rest(self) -> bytes:
        """Every piece not yet read, as one."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return data

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    def close(self) -> None:
        """Drop the connection (the region sees the client leave and stops generating)."""
        self._unwatch()
        if not self._released:
            self._released = True
            self._conn.close()
            self._conn.response = None

    def release(self) -> None:
        """Done with this response: a finished keep-alive exchange returns its connection to the pool."""
        self._unwatch()
        if self._released:
            return
        if not (self.complete and self.keep_alive and not self._chunks) or self._conn.closed:
            self.close()
            return
        self._released = True
        self._conn.response = None
        self._conn.pool._put(self._conn)


def _expire(waiting: asyncio.Future[Any]) -> None:
    if not waiting.done():
        waiting.set_exception(TimeoutError("the region did not answer in time"))


class UpstreamPool:
    """Keep-alive connections per (host, port), most recently used first, at most ``limit`` open."""

    def __init__(self, *, limit: int, keepalive_s: float = 4.0) -> None:
        self.limit = limit
        self.keepalive_s = keepalive_s
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._origins: dict[str, tuple[str, int, bytes]] = {}
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    def _origin(self, base_url: str) -> tuple[str, int, bytes]:
        hit = self._origins.get(base_url)
        if hit is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"upstream URL must be http://host[:port]: {base_url!r}")
            port = parts.port or 80
            hit = (parts.hostname, port, parts.netloc.encode("latin-1"))
            self._origins[base_url] = hit
        return hit

    async def _acquire(self, host: str, port: int, connect_s: float, wait_s: float | None) -> _Conn:
        while True:
            idle = self._idle.get((host, port))
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    if now - conn.idle_since < self.keepalive_s:
                        return conn
                    conn.close()
            if self._open < self.limit:
                break
            self._close_one_idle()  # another region's idle connection makes room once it is gone
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            async with asyncio.timeout(wait_s):
                await waiter  # a connection came back to the pool or closed
        self._open += 1  # counted from here; connection_lost (or a failed connect) gives it back
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_s if wait_s is None else min(connect_s, wait_s)):
                _, conn = await loop.create_connection(lambda: _Conn(self, (host, port)), host, port)
        except BaseException:
            self._lost()
            raise
        return conn

    def _close_one_idle(self) -> bool:
        for conns in self._idle.values():
            while conns:
                conn = conns.pop(0)
                if not conn.closed:
                    conn.close()
                    return True
        return False

    def _lost(self) -> None:
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def _put(self, conn: _Conn) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._wake()

    async def request(
        self,
        base_url: str,
        method: str,
        path_qs: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        connect_s: float,
        idle_s: float | None,
        ttfb_s: float | None = None,
        header_block: bytes = b"",
    ) -> UpstreamResponse:
        """Send one request; returns at the response's headers. Cancelling closes the connection.
        ``header_block``: more header lines already encoded (``\r\nName: value`` each), sent before
        ``headers``.

        ``ttfb_s`` bounds the whole wait for the headers (a free connection, connecting, the region's first
        byte): TimeoutError after it, and the connection is closed. A timer on the response future, not
        asyncio.timeout, because this runs for every request."""
        started = time.monotonic()
        host, port, netloc = self._origin(base_url)
        conn = await self._acquire(host, port, connect_s, ttfb_s)
        lines = [f"{method} {path_qs} HTTP/1.1\r\nHost: ".encode("latin-1"), netloc, header_block]
        for k, v in headers:
            lines.append(encode_header_text(f"\r\n{k}: {v}"))
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(b"\r\nContent-Length: %d" % len(body))
        lines.append(b"\r\n\r\n")
        head = conn.send(b"".join(lines), body)
        timer = None
        if ttfb_s is not None:
            timer = conn.loop.call_later(ttfb_s - (time.monotonic() - started), _expire, head)
        try:
            resp = await head
        except BaseException:  # cancelled (a hedge loser), timed out or broken: the region must see us leave
            conn.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if method == "HEAD":  # no body follows, whatever the headers say; not reusable by the parser
            resp.complete = True
            resp.keep_alive = False
        resp._idle_s = idle_s
        return resp

    async def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
