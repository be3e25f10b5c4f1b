"""The campaign's TCP fault proxy on loopback: it passes bytes both ways, delays them when told, holds lost
segments for their retransmission timeouts, and a partition resets what is open and refuses what comes until
it heals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from meridian.chaos.proxy import FaultProxy


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def roundtrip(port: int, data: bytes = b"ping") -> tuple[bytes, float]:
    t = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(data)), 5)
    writer.close()
    return got, time.monotonic() - t


async def test_the_proxy_passes_delays_and_partitions(echo: int) -> None:
    proxy = await FaultProxy("127.0.0.1", echo).start()
    try:
        got, fast = await roundtrip(proxy.port)
        assert got == b"ping"
        proxy.set("latency", 0.2)
        got, slow = await roundtrip(proxy.port)
        assert got == b"ping" and slow >= 0.4 > fast  # 0.2 s each way
        proxy.set("loss", loss=1.0 - 1e-9)  # every segment lost until its timeouts add up to a few seconds
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(roundtrip(proxy.port), 0.5)
        proxy.set("loss", loss=0.0)
        got, lossless = await roundtrip(proxy.port)
        assert got == b"ping" and lossless < 0.2
        proxy.set("pass")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        proxy.set("partition")  # what is open is reset ...
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(b"y")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(1), 5)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):  # ... and what comes is refused
            await roundtrip(proxy.port)
        proxy.set("pass")
        assert (await roundtrip(proxy.port))[0] == b"ping"  # healed
    finally:
        await proxy.close()
