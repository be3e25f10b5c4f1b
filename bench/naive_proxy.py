"""Reference proxies for bench/proxy, no routing, no tracing, no bookkeeping (uvloop, keep-alive upstream):

  naive  the proxy the issue names: aiohttp web.Application + aiohttp ClientSession
  floor  aiohttp web.Application + the edge's own upstream pool (edge.upstream): what the edge's feature
         set is measured against

Usage: python bench/naive_proxy.py naive|floor PORT UPSTREAM_URL"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

from edge.upstream import UpstreamPool

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
SESSION = web.AppKey("session", aiohttp.ClientSession)
POOL = web.AppKey("pool", UpstreamPool)


def main() -> None:
    mode, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/")

    async def clients(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        app[POOL] = UpstreamPool(limit=4096)
        yield
        await app[SESSION].close()
        await app[POOL].close()

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

    async def floor(request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
        r = await request.app[POOL].request(
            upstream, request.method, request.raw_path, headers, await request.read(), connect_s=1, idle_s=60
        )
        resp = web.StreamResponse(status=r.status)
        for k, v in r.headers.items():
            if k.lower() not in HOP:
                resp.headers.add(k, v)
        try:
            await resp.prepare(request)
            async for chunk in r:
                await resp.write(chunk)
            await resp.write_eof()
        except ConnectionResetError:
            r.close()
            return resp
        r.release()
        return resp

    app = web.Application()
    app.cleanup_ctx.append(clients)
    app.router.add_route("*", "/{tail:.*}", naive if mode == "naive" else floor)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
