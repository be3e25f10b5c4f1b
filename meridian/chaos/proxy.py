"""A TCP fault proxy (I/O): one listening port in front of one target, passing bytes both ways until told to
add latency, lose packets (what TCP shows of loss: a share of the segments held for a retransmission timeout,
and everything behind them), reset every connection, or partition (reset what is open and refuse what comes).
The campaign puts one on each link it faults, so network faults need no privileges (no ``tc``, no
namespaces)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Literal

Mode = Literal["pass", "latency", "loss", "partition"]
CHUNK = 65536
RTO_S = 0.2  # Linux's minimum retransmission timeout: what a lost segment costs at least


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, rng: random.Random | None = None) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.latency_s = 0.0
        self.loss = 0.0  # in "loss": the share of segments lost (each held RTO_S, doubling while lost again)
        self.rng = rng or random.Random(0)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def set(self, mode: Mode, latency_s: float = 0.0, loss: float = 0.0) -> None:
        """Change what the link does; a partition resets every open connection at once."""
        self.mode, self.latency_s, self.loss = mode, latency_s, loss
        if mode == "partition":
            self.reset()

    def reset(self) -> None:
        """Every open connection dropped with a reset (both sides see it)."""
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "partition":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._open.discard(writer)
        self._open.discard(up_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.mode == "latency" and self.latency_s:
                    await asyncio.sleep(self.latency_s)
                rto = RTO_S
                while self.mode == "loss" and self.rng.random() < self.loss:  # lost, retransmitted later
                    await asyncio.sleep(rto)
                    rto = min(2 * rto, 3.0)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
