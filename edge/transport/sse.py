"""Server-sent events as the edge relays them (pure, no I/O): whole events only, each ``data:`` payload valid
JSON or ``[DONE]``. A malformed event is dropped and counted; a partial one is held until it completes and
dropped (counted) if the stream ends first — nothing partial or broken reaches the client. A stream framed
with CRLF, or one whose events never end, is passed through as it comes (``passing``). It also tells whether a
stream ended as a chat or completion stream should: with ``[DONE]``, or at least with a finish reason."""

from __future__ import annotations

import re

import msgspec

_RAW = msgspec.json.Decoder(msgspec.Raw)  # validates the JSON without building it (~0.3 µs an event)
MOST_HELD = 1 << 16  # a partial event longer than this: not an event stream we can frame
DONE = b"data: [DONE]\n\n"
_FINISHED = re.compile(rb'"finish_reason":\s*"')  # a finish reason set (not null)


class EventFrames:
    __slots__ = ("done", "dropped", "last", "passing", "prev", "tail")

    def __init__(self) -> None:
        self.tail = b""
        self.dropped = 0
        self.passing = False
        self.done = False  # `data: [DONE]` went by
        self.prev = self.last = b""  # the last two pieces passed on

    def finished(self) -> bool:
        """The stream said its answer was whole: ``[DONE]``, or a finish reason in its last events (a server
        that leaves ``[DONE]`` out). A stream that ends without either was cut short."""
        return self.done or any(_FINISHED.search(c) for c in (self.prev, self.last))

    def feed(self, chunk: bytes) -> bytes:
        """What of ``chunk`` (and what was held before it) may go to the client now."""
        if self.passing:
            return chunk
        if self.tail:
            chunk, self.tail = self.tail + chunk, b""
        if chunk.startswith(b"data: {") and chunk.find(b"\n") == len(chunk) - 2 and chunk[-1:] == b"\n":
            try:  # the usual chunk: one single-line JSON event (a copy of ~150 bytes costs less than a view)
                _RAW.decode(chunk[6:-2])
            except msgspec.DecodeError:
                self.dropped += 1
                return b""
            self.prev, self.last = self.last, chunk
            return chunk
        if not chunk.endswith(b"\n\n"):
            end = chunk.rfind(b"\n\n")
            if end < 0:
                if b"\r\n" in chunk or len(chunk) > MOST_HELD:
                    self.passing = True
                    return chunk
                self.tail = chunk
                return b""
            chunk, self.tail = chunk[: end + 2], chunk[end + 2 :]
        events = chunk.split(b"\n\n")[:-1]  # several events, multi-line ones, [DONE]
        kept = [e for e in events if _well_formed(e)]
        if len(kept) != len(events):
            self.dropped += len(events) - len(kept)
            chunk = b"".join(e + b"\n\n" for e in kept)
        if chunk:
            self.done = self.done or chunk.endswith(DONE)
            self.prev, self.last = self.last, chunk
        return chunk

    def end(self) -> None:
        """The stream ended: a partial event still held is dropped."""
        if self.tail:
            self.dropped += 1
            self.tail = b""


def _well_formed(event: bytes) -> bool:
    if event.startswith(b"data: ") and b"\n" not in event:  # one data line, the usual event
        if event == b"data: [DONE]":
            return True
        try:
            _RAW.decode(event[6:])
        except msgspec.DecodeError:
            return False
        return True
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            payload = line[5:].lstrip(b" ")
            if payload != b"[DONE]":
                try:
                    _RAW.decode(payload)
                except msgspec.DecodeError:
                    return False
    return True
