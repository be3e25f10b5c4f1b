"""Reference proxies for bench/proxy, no routing, no tracing, no bookkeeping (uvloop, keep-alive upstream):

  naive  the proxy the issue names: aiohttp web.Application + aiohttp ClientSession
  floor  aiohttp's low-level web.Server (what the edge serves on) + the edge's own upstream pool
         (edge.transport.upstream), status line and first event in one write when both are in hand, an event
         stream's later pieces relayed from the region connection's callback as the edge does: what the
         edge's feature set is measured against

Usage: python bench/naive_proxy.py naive|floor PORT UPSTREAM_URL"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

from edge.transport.upstream import UpstreamPool, UpstreamResponse

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
SESSION = web.AppKey("session", aiohttp.ClientSession)


def main() -> None:
    mode, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")

    async def clients(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        yield
        await app[SESSION].close()

    async def naive(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with request.app[SESSION].request(
            request.method, upstream + request.raw_path, headers=headers, data=await request.read()
        ) as r:
            resp = web.StreamResponse(status=r.status)
            for k, v in r.headers.items():
                if k.lower() not in HOP:
                    resp.headers.add(k, v)
            try:
                await resp.prepare(request)
                async for chunk in r.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionResetError:  # wrk hung up at the end of its run
                pass
            return resp

    pool = UpstreamPool(limit=4096)

    async def floor(request: web.BaseRequest) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
        r = await pool.request(
            upstream, request.method, request.raw_path, headers, await request.read(), connect_s=1, idle_s=60
        )
        resp = web.StreamResponse(status=r.status)
        resp._send_headers_immediately = not r.buffered  # as the edge does
        for k, v in r.headers.items():
            if k.lower() not in HOP:
                resp.headers.add(k, v)
        try:
            await resp.prepare(request)
            first = await r.readany()
            end = b""
            if first:
                await resp.write(first)  # aiohttp's write: with the headers held for it
                if (tail := await pumped(request, r)) is None:
                    async for chunk in r:
                        await resp.write(chunk)
                else:
                    end = tail
            await resp.write_eof(end)  # what came with the body's end goes out with it, as the edge does
        except ConnectionResetError:
            r.close()
            return resp
        r.release()
        return resp

    async def pumped(request: web.BaseRequest, r: UpstreamResponse) -> bytes | None:
        """An event stream's later pieces written as HTTP/1.1 chunks from the region connection's callback,
        one write per read from the region, as the edge relays them (no framing, counting or checks); what
        came with the body's end is returned, for the response's last write. None: not an event stream."""
        writer, transport = request.writer, request.transport
        event_stream = r.headers.get("Content-Type", "").startswith("text/event-stream")
        if not event_stream or transport is None or not getattr(writer, "chunked", False):
            return None

        def sink(piece: bytes) -> bool:
            if transport.is_closing():
                raise ConnectionResetError("the client went away")
            transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            return False

        return await r.pump(sink) or b""  # never None: this sink never hands the stream back

    async def serve_floor() -> None:
        runner = web.ServerRunner(web.Server(floor, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    if mode == "floor":
        uvloop.run(serve_floor())
        return
    app = web.Application()
    app.cleanup_ctx.append(clients)
    app.router.add_route("*", "/{tail:.*}", naive)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
