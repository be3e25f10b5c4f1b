"""The upstream connection pool against real servers on loopback: reuse, body framings, cut-offs, timeouts,
cancellation, the connection limit, read-side flow control and the relay's pump (pieces handed over from the
connection's callback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from edge.transport.forwarder import upstream_headers
from edge.transport.upstream import HIGH_WATER, UpstreamError, UpstreamPool
from tests.fleet import ServerFactory

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def poll(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """A bare TCP server speaking whatever the handler writes; returns its base URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for s in servers:
        s.close()


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(limit=64)
    yield p
    await p.close()


def keep(got: list[bytes], *, hand_back: bool = False) -> Callable[[bytes], bool]:
    """A ``pump`` sink that keeps each piece in ``got``; True (hand the stream back) when ``hand_back``."""

    def sink(piece: bytes) -> bool:
        got.append(piece)
        return hand_back

    return sink


async def test_keep_alive_reuses_one_connection_and_sends_method_path_headers_body(
    serve: ServerFactory, pool: UpstreamPool
) -> None:
    peers: set[object] = set()
    seen: list[tuple[str, str, str, bytes]] = []

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.read()
        seen.append((request.method, request.path_qs, request.headers.get("X-Test", ""), body))
        return web.Response(body=b"ok:" + body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    server = await serve(app)
    base = str(server.make_url("")).rstrip("/")
    for i in range(20):
        resp = await pool.request(
            base, "POST", f"/v1/x?i={i}", [("X-Test", "yes")], b"%d" % i, connect_s=1, idle_s=1
        )
        assert resp.status == 200
        assert await resp.read() == b"ok:%d" % i
        resp.release()
    assert len(peers) == 1
    assert pool.open_connections == 1
    assert seen[3] == ("POST", "/v1/x?i=3", "yes", b"3")


async def test_chunked_and_close_delimited_bodies_arrive_whole(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        )
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    resp = await pool.request(await raw_server(chunked), "GET", "/", [], b"", connect_s=1, idle_s=1)
    assert resp.content_type == "text/event-stream"
    assert await resp.read() == b"data: 1\n\ndata: 2\n\n"
    resp = await pool.request(await raw_server(until_close), "GET", "/", [], b"", connect_s=1, idle_s=1)
    assert await resp.read() == b"all of it"
    resp.release()
    await poll(lambda: pool.open_connections == 1)  # the chunked one stays, the closed one is gone


async def test_a_body_cut_short_raises_and_a_silent_region_times_out(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        await writer.drain()
        await asyncio.sleep(30)

    resp = await pool.request(await raw_server(short), "GET", "/", [], b"", connect_s=1, idle_s=1)
    with pytest.raises(UpstreamError):
        await resp.read()
    resp = await pool.request(await raw_server(silent), "GET", "/", [], b"", connect_s=1, idle_s=0.2)
    assert await resp.readany() == b"ab"
    with pytest.raises(TimeoutError):
        await resp.readany()
    resp.close()


async def test_connect_refused_is_an_upstream_connection_error(pool: UpstreamPool) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(OSError):
        await pool.request(f"http://127.0.0.1:{port}", "GET", "/", [], b"", connect_s=1, idle_s=1)
    assert pool.open_connections == 0


async def test_cancelling_before_headers_closes_the_connection(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    asked, gone = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        asked.set()
        if await reader.read(1) == b"":  # the edge hung up
            gone.set()

    base = await raw_server(slow)
    task = asyncio.create_task(pool.request(base, "GET", "/", [], b"", connect_s=1, idle_s=1))
    await asyncio.wait_for(asked.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(gone.wait(), 5)
    await poll(lambda: pool.open_connections == 0)


async def test_connection_limit_queues_requests(serve: ServerFactory) -> None:
    active = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/", slow)
    server = await serve(app)
    base = str(server.make_url("")).rstrip("/")
    limited = UpstreamPool(limit=2)

    async def one() -> bytes:
        resp = await limited.request(base, "GET", "/", [], b"", connect_s=1, idle_s=1)
        try:
            return await resp.read()
        finally:
            resp.release()

    try:
        assert await asyncio.gather(*(one() for _ in range(6))) == [b"done"] * 6
        assert most == 2
        assert limited.open_connections == 2
    finally:
        await limited.close()


async def test_slow_reader_pauses_the_region_and_loses_nothing(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    total = 8 * 1024 * 1024
    piece = b"z" * 65536

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(piece)):
            writer.write(piece)
            await writer.drain()

    resp = await pool.request(await raw_server(big), "GET", "/", [], b"", connect_s=1, idle_s=5)
    await poll(lambda: resp._paused)
    buffered_when_paused = resp._buffered
    assert buffered_when_paused < HIGH_WATER + 2 * len(piece) + 65536
    assert len(await resp.read()) == total
    resp.release()
    assert pool.open_connections == 1


async def test_a_connection_idle_longer_than_keepalive_is_not_reused(serve: ServerFactory) -> None:
    peers: list[object] = []

    async def hello(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    server = await serve(app)
    base = str(server.make_url("")).rstrip("/")
    short = UpstreamPool(limit=8, keepalive_s=0.05)
    try:
        for _ in range(2):
            resp = await short.request(base, "GET", "/", [], b"", connect_s=1, idle_s=1)
            assert await resp.read() == b"hi"
            resp.release()
        await asyncio.sleep(0.1)  # the idle time itself is what is under test
        resp = await short.request(base, "GET", "/", [], b"", connect_s=1, idle_s=1)
        assert await resp.read() == b"hi"
        resp.release()
    finally:
        await short.close()
    assert peers[0] == peers[1] != peers[2]


async def test_no_headers_within_ttfb_raises_timeout_and_hangs_up(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    gone = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        if await reader.read(1) == b"":
            gone.set()

    base = await raw_server(mute)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await pool.request(base, "GET", "/", [], b"", connect_s=1, idle_s=1, ttfb_s=0.2)
    assert time.monotonic() - started >= 0.2
    await asyncio.wait_for(gone.wait(), 5)
    await poll(lambda: pool.open_connections == 0)


async def test_the_idle_timeout_counts_from_the_regions_last_bytes(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    """A stream whose events keep coming faster than the idle timeout lives on well past it (one watchdog,
    re-armed); once the region goes quiet the waiting read fails about one timeout after its last bytes."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        )
        for _ in range(12):  # 0.6 s of events every 50 ms, three times the idle timeout
            writer.write(b"9\r\ndata: x\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(30)  # then silence

    resp = await pool.request(await raw_server(trickle), "GET", "/", [], b"", connect_s=1, idle_s=0.2)
    events = 0
    with pytest.raises(TimeoutError):
        while True:
            chunk = await resp.readany()
            events += chunk.count(b"data:")
            last = time.monotonic()
    quiet = time.monotonic() - last
    resp.close()
    assert events == 12
    assert 0.15 <= quiet < 1.0


async def test_headers_reach_the_region_as_the_client_sent_them(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    """Header values are passed on byte for byte (UTF-8 included: no 500 on a value outside Latin-1),
    hop-by-hop and client-sent internal headers are not, and X-Forwarded-For is the address we resolved."""
    heads: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await _read_head(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    raw_note = "日本 café".encode()
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("X-Note", raw_note.decode("utf-8", "surrogateescape")),  # how aiohttp's parser hands it over
                ("Connection", "keep-alive, X-Secret-Hop"),
                ("X-Secret-Hop", "only for the next hop"),
                ("X-Real-IP", "6.6.6.6"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Meridian-Region", "us-east-1"),
                ("X-Meridian-Priority", "critical"),
                ("X-Forwarded-For", "6.6.6.6"),
                ("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
            ]
        )
    )
    block = upstream_headers(incoming, client_ip="81.2.69.142", edge="eu-west-1")
    assert block == (
        b"\r\nX-Note: " + raw_note + b"\r\nX-Meridian-Priority: critical\r\nX-Forwarded-For: 81.2.69.142"
        b"\r\nX-Meridian-Edge: eu-west-1"  # ours, not the client's X-Meridian-Region
    )
    resp = await pool.request(
        await raw_server(capture),
        "POST",
        "/v1/x",
        [("traceparent", "00-ab")],
        b"{}",
        connect_s=1,
        idle_s=1,
        header_block=block,
    )
    assert resp.status == 204
    resp.release()
    assert len(heads) == 1 and heads[0].startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert block + b"\r\ntraceparent: 00-ab\r\nContent-Length: 2\r\n\r\n" in heads[0]


async def _stream_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request's head; answer with a chunked event stream's head."""
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
    await writer.drain()


def _events(server_go: asyncio.Event, n: int, *, then_silent: bool = False) -> Handler:
    """A region streaming ``n`` chunked events once ``server_go`` is set, each flushed on its own."""

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _stream_head(reader, writer)
        await server_go.wait()
        for i in range(n):
            event = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.005)  # one read per event on the edge's side
        if then_silent:
            await asyncio.sleep(30)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return stream


async def test_pump_hands_each_piece_over_from_the_connections_callback(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    """The relay's per-event path: pieces reach the sink from the connection's data callback (no task
    runs it: no future and no task switch per event), in order, and the pump ends with the body."""
    go = asyncio.Event()
    resp = await pool.request(await raw_server(_events(go, 10)), "GET", "/", [], b"", connect_s=1, idle_s=5)
    got: list[bytes] = []
    in_task: list[bool] = []

    def sink(piece: bytes) -> bool:
        got.append(piece)
        in_task.append(asyncio.current_task() is not None)
        return False

    go.set()
    assert await resp.pump(sink) == b""  # the body's end came on its own: nothing came with it
    assert b"".join(got) == b"".join(b"data: %d\n\n" % i for i in range(10))
    assert not any(in_task), in_task  # every piece from the callback, none from the pumping task
    resp.release()
    assert pool.open_connections == 1


async def test_pump_hands_back_when_asked_and_what_came_meanwhile_follows_in_order(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    go = asyncio.Event()
    resp = await pool.request(await raw_server(_events(go, 8)), "GET", "/", [], b"", connect_s=1, idle_s=5)
    got: list[bytes] = []
    go.set()
    assert await resp.pump(keep(got, hand_back=True)) is None  # handed back at once
    assert got == [b"data: 0\n\n"]
    await poll(lambda: resp.buffered > 0 or resp.complete)  # the region went on meanwhile: kept
    tail = await resp.pump(keep(got))
    assert tail is not None
    assert b"".join(got) + tail == b"".join(b"data: %d\n\n" % i for i in range(8))


async def test_pump_gives_what_one_read_brought_in_one_piece_and_keeps_the_bodys_end_for_the_caller(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    """One write to the client per read from the region (as nginx relays): three events that arrive
    together reach the sink as one piece; the last events, arriving with the body's end, are not given to
    the sink but returned, so the relay writes them with the stream's end in one write."""
    go, more = asyncio.Event(), asyncio.Event()

    def chunk(*events: bytes) -> bytes:
        return b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events)

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _stream_head(reader, writer)
        await go.wait()
        writer.write(chunk(b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"))  # one write: one read
        await writer.drain()
        await more.wait()
        writer.write(chunk(b"data: 3\n\n", b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    resp = await pool.request(await raw_server(stream), "GET", "/", [], b"", connect_s=1, idle_s=5)
    got: list[bytes] = []

    def sink(piece: bytes) -> bool:
        got.append(piece)
        more.set()
        return False

    go.set()
    tail = await resp.pump(sink)
    assert got == [b"data: 0\n\ndata: 1\n\ndata: 2\n\n"]  # three events, one piece, one sink call
    assert tail == b"data: 3\n\ndata: [DONE]\n\n"  # came with the end: the caller's last write
    assert resp.complete
    resp.release()
    assert pool.open_connections == 1


async def test_pump_raises_what_the_sink_raised_and_times_out_a_silent_region(
    raw_server: Callable[[Handler], Awaitable[str]], pool: UpstreamPool
) -> None:
    go = asyncio.Event()
    base = await raw_server(_events(go, 2, then_silent=True))
    resp = await pool.request(base, "GET", "/", [], b"", connect_s=1, idle_s=5)

    def broken(piece: bytes) -> bool:
        raise ConnectionResetError("the client went away")

    go.set()
    with pytest.raises(ConnectionResetError, match="client went away"):
        await resp.pump(broken)
    resp.close()

    go2 = asyncio.Event()
    resp = await pool.request(
        await raw_server(_events(go2, 2, then_silent=True)), "GET", "/", [], b"", connect_s=1, idle_s=0.2
    )
    go2.set()
    got: list[bytes] = []
    with pytest.raises(TimeoutError):
        await resp.pump(keep(got))
    assert len(got) == 2  # both events, then the idle timeout
    resp.close()
