"""Every answer's own bookkeeping, added in one place as any answer starts (whatever produced it: the
proxy, an error, an endpoint of the edge's own): its request id (``x-request-id``, as OpenAI's API sends
one: the trace id of the edge's span, so a client can find its request in the traces and the access log)
and ``Server-Timing`` (W3C): the edge's own time before the upstream was called (admission, decision) and
the upstream's time to its first byte (for a stream, its first event)."""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web
from multidict import istr

REQUEST_ID = istr("x-request-id")
SERVER_TIMING = istr("Server-Timing")


class EdgeRequest(web.BaseRequest):
    """aiohttp's request, with when it began, its id once the proxy knows its trace, and when its first
    attempt left and what the answering upstream took to its first byte (set by the forwarder)."""

    ATTRS = web.BaseRequest.ATTRS | frozenset(
        ["began", "request_id", "sent_at", "upstream_s", "admitted", "served", "streaming", "continent"]
    )
    began: float
    request_id: str | None
    sent_at: float | None  # monotonic time the first attempt left
    upstream_s: float | None  # the answering attempt's time to its first byte, seconds
    admitted: Any  # its admission's terms (tenant, model), once admitted: what the console shows
    served: tuple[str, str] | None  # (region, replica) of the attempt it committed to
    streaming: bool
    continent: str | None  # where its client is (GeoIP), once located

    def start(self) -> EdgeRequest:
        self.began = time.monotonic()
        self.request_id = self.sent_at = self.upstream_s = self.admitted = self.served = None
        self.streaming = False
        self.continent = None
        return self

    def timing(self) -> str:
        if self.sent_at is None:  # never forwarded: all of it was the edge's
            return f"edge;dur={(time.monotonic() - self.began) * 1000:.2f}"
        edge = f"edge;dur={(self.sent_at - self.began) * 1000:.2f}"
        return edge if self.upstream_s is None else f"{edge}, upstream;dur={self.upstream_s * 1000:.2f}"

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        headers = response.headers
        headers[REQUEST_ID] = self.request_id or os.urandom(16).hex()
        headers[SERVER_TIMING] = self.timing()
