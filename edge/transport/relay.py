"""A stream's relay, piece by piece (I/O): each piece framed whole (``EventFrames``), its tokens counted,
written, kept for a continuation, the deadline and the key checked. After an event stream's first event the
pieces are written from the region's connection callback as HTTP/1.1 chunks: no future, no task switch and
no aiohttp write call per event; the relaying task is handed back a slow client, a deadline passed or a key
revoked."""

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


class Relay:
    """One stream's per-piece work, whoever writes the piece: framed and counted before it goes out, kept
    for a continuation after, then the request's deadline and its key checked. Once ``direct`` it is also
    the step ``UpstreamResponse.pump`` calls, writing each piece itself: True hands the stream back to the
    task (a slow client, ``overdue`` or ``revoked``)."""

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
        frames: EventFrames | None,
        *,
        deadline: float,
        tally: Tally | None,
        sent: Sent | None,
        standing: Standing | None,
    ) -> None:
        self.frames, self.deadline, self.standing = frames, deadline, standing
        self.tally, self.sent = tally, sent
        self.overdue = self.revoked = False
        self.transport: asyncio.Transport | None = None
        self.writer: StreamWriter | None = None

    def frame(self, piece: bytes) -> bytes:
        """What of ``piece`` may go to the client now (whole events only), its tokens counted."""
        chunk = self.frames.feed(piece) if self.frames is not None else piece
        if chunk and self.tally is not None:  # tokens counted as they flow
            self.tally.chunk(chunk)
        return chunk

    def wrote(self, chunk: bytes) -> bool:
        """``chunk`` went to the client: kept, should the region break off (bounded); True when the task
        must act (``overdue``, ``revoked``)."""
        if self.sent is not None:
            self.sent.add(chunk)
        if time.monotonic() > self.deadline:
            self.overdue = True
            return True
        if self.standing is not None and self.standing.revoked():
            self.revoked = True
            return True
        return False

    def direct(self, request: web.BaseRequest) -> bool:
        """From now on an event stream's pieces go straight to the client's transport, when its response
        (already started: aiohttp wrote the headers with the first event) goes out as plain HTTP/1.1 chunks
        (no declared length; the edge never compresses). False: the task relays it through aiohttp."""
        writer, transport = request.writer, request.transport
        if self.frames is None or not isinstance(writer, StreamWriter) or transport is None:
            return False
        if not writer.chunked or writer.length is not None:
            return False
        self.transport, self.writer = transport, writer
        return True

    def __call__(self, piece: bytes) -> bool:
        chunk = self.frame(piece)
        if not chunk:
            return False
        transport, writer = self.transport, self.writer
        assert transport is not None and writer is not None  # pumped only once ``direct``
        if transport.is_closing():
            raise ClientGone("the client went away")
        frame = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        transport.write(frame)
        writer.output_size += len(frame)  # the access log's byte count
        return self.wrote(chunk) or transport.get_write_buffer_size() > CLIENT_HIGH_WATER
