"""This edge's own round trip to each region (I/O): light active probes — ``GET /health`` on one replica per
region in turn, over the keep-alive pool, with ``X-Meridian-Edge`` naming this edge — fed to ``Observed``,
which keeps them as an EWMA per region. Never averaged with other edges' views."""

from __future__ import annotations

import asyncio
import logging
import time

from edge.telemetry.observed import Observed
from edge.transport.upstream import UpstreamPool, encode_header_text
from fleet.state import Topology

log = logging.getLogger("meridian.rtt")

PROBE_PATH = "/health"


class RttProber:
    def __init__(
        self,
        *,
        pool: UpstreamPool,
        topology: Topology,
        edge: str,
        observed: Observed,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self.pool = pool
        self.observed = observed
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.header = encode_header_text(f"\r\nX-Meridian-Edge: {edge}")
        self.targets = {r.name: [rep.base_url for rep in r.replicas] for r in topology.regions}
        self.rounds = 0
        self._warm: set[str] = set()  # URLs with a connection already open: their probes time one round trip

    async def run(self) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self.interval_s)

    async def round(self) -> dict[str, float]:
        """Probe one replica of every region (the next one each round); returns what was measured."""
        turn = self.rounds
        self.rounds += 1
        urls = {region: reps[turn % len(reps)] for region, reps in self.targets.items()}
        timed = await asyncio.gather(*(self._probe(url) for url in urls.values()))
        samples = {region: ms for region, ms in zip(urls, timed, strict=True) if ms is not None}
        self.observed.probed(samples)
        return samples

    async def _probe(self, url: str) -> float | None:
        """Milliseconds for one answered probe (any status: a 503 crossed the network too), or None when
        it failed or was the first on a new connection (a connect costs a round trip of its own)."""
        t0 = time.monotonic()
        try:
            resp = await self.pool.request(
                url,
                "GET",
                PROBE_PATH,
                (),
                b"",
                header_block=self.header,
                connect_s=self.timeout_s,
                idle_s=self.timeout_s,
                ttfb_s=self.timeout_s,
            )
            elapsed = (time.monotonic() - t0) * 1000.0
            await resp.read()
            resp.release()
        except (OSError, TimeoutError) as exc:
            log.debug("round-trip probe to %s failed: %s", url, exc)
            self._warm.discard(url)
            return None
        if url not in self._warm:
            self._warm.add(url)
            return None
        return elapsed
