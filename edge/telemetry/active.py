"""The requests in flight at this edge (bookkeeping, no I/O): each registered as the proxy takes it and gone
when its answer ends; a snapshot for the control plane's console (age, tenant, model, region and replica
once committed, streaming or not) and an operator's cancel by request id (the request's task is cancelled:
its upstream attempt is closed and its slot let go, as when a client leaves)."""

from __future__ import annotations

import itertools
from typing import Any

from edge.telemetry.answer import EdgeRequest

SHOWN = 500  # at most this many in a snapshot (the oldest first: the ones an operator looks for)


class Active:
    def __init__(self) -> None:
        self.requests: dict[str, EdgeRequest] = {}  # its own key (a trusted peer may reuse a trace id)
        self._next = itertools.count(1)

    def add(self, request: EdgeRequest) -> str:
        key = f"{next(self._next):x}"
        self.requests[key] = request
        return key

    def snapshot(self, now: float, wall: float) -> list[dict[str, Any]]:
        """The requests in flight, oldest first: ``now`` monotonic, ``wall`` the same instant's unix time."""
        out = []
        for key, r in sorted(self.requests.items(), key=lambda kv: kv[1].began)[:SHOWN]:
            admitted, served = r.admitted, r.served
            out.append(
                {
                    "id": key,
                    "request_id": r.request_id,
                    "since": round(wall - (now - r.began), 3),
                    "tenant": getattr(admitted, "tenant_id", None),
                    "model": getattr(admitted, "model", None),
                    "region": served[0] if served else None,
                    "replica": served[1] if served else None,
                    "stream": r.streaming,
                }
            )
        return out

    def cancel(self, key: str) -> bool:
        """Cancel the request in flight under ``key`` (False: none is, any more)."""
        request = self.requests.get(key)
        if request is None:
            return False
        request.task.cancel()
        return True
