"""A stream's relay, event by event, from the region's connection callback (I/O): each piece framed whole
(``EventFrames``), its tokens counted, written to the client as an HTTP/1.1 chunk, kept for a continuation;
no future, no task switch and no aiohttp write call per event. It hands back to the relaying task when the
client is slow, the request's deadline passed or its key was revoked."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from edge.admission.tenants import Standing
from edge.telemetry.usage import Tally
from edge.transport.continuation import Sent
from edge.transport.sse import EventFrames

CLIENT_HIGH_WATER = 64 * 1024  # aiohttp's own drain point: past it the task waits for the client


class ClientGone(ConnectionResetError):
    """The client's connection closed while its stream was relayed."""


class EventPump:
    """The per-piece step ``UpstreamResponse.pump`` calls: True hands the stream back to the task."""

    __slots__ = (
        "deadline",
        "frames",
        "overdue",
        "revoked",
        "sent",
        "standing",
        "tally",
        "transport",
        "writer",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        writer: StreamWriter,
        frames: EventFrames,
        *,
        deadline: float,
        tally: Tally | None,
        sent: Sent | None,
        standing: Standing | None,
    ) -> None:
        self.transport, self.writer, self.frames = transport, writer, frames
        self.deadline, self.tally, self.sent, self.standing = deadline, tally, sent, standing
        self.overdue = self.revoked = False

    @classmethod
    def of(
        cls,
        request: web.BaseRequest,
        frames: EventFrames,
        *,
        deadline: float,
        tally: Tally | None,
        sent: Sent | None,
        standing: Standing | None,
    ) -> EventPump | None:
        """The pump for a response already started, when its body goes out as plain HTTP/1.1 chunks (no
        declared length; the edge never compresses); None otherwise (the task relays it through aiohttp)."""
        writer, transport = request.writer, request.transport
        if not isinstance(writer, StreamWriter) or transport is None:
            return None
        if not writer.chunked or writer.length is not None:
            return None
        return cls(transport, writer, frames, deadline=deadline, tally=tally, sent=sent, standing=standing)

    def __call__(self, piece: bytes) -> bool:
        chunk = self.frames.feed(piece)
        if not chunk:
            return False
        if self.tally is not None:  # tokens counted as they flow
            self.tally.chunk(chunk)
        transport = self.transport
        if transport.is_closing():
            raise ClientGone("the client went away")
        frame = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        transport.write(frame)
        self.writer.output_size += len(frame)  # the access log's byte count
        if self.sent is not None:  # what the client has, should the region break off (bounded)
            self.sent.add(chunk)
        if time.monotonic() > self.deadline:
            self.overdue = True
            return True
        if self.standing is not None and self.standing.revoked():
            self.revoked = True
            return True
        return transport.get_write_buffer_size() > CLIENT_HIGH_WATER
