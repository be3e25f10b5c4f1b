"""Engine load signals at the edge (I/O): poll the replicated signals hash the control plane publishes
(one read of this region's Redis replica every ``poll_s``), keep each replica's record with the monotonic
time of its scrape, and keep the last good set through Redis trouble (their age tells the picker when to
stop trusting them)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import redis.asyncio as aioredis

from edge.polling import poll
from fleet.keys import KEY_SIGNALS
from fleet.signals import EngineSignals, decode_signals

log = logging.getLogger("meridian.signals")


class SignalsFeed:
    def __init__(self, *, url: str, poll_s: float, connect: Callable[[str], aioredis.Redis]) -> None:
        self.url = url
        self.poll_s = poll_s
        self._connect = connect
        self.current: Mapping[str, Mapping[str, tuple[EngineSignals, float]]] = {}  # region -> replica ->

    def get(self) -> Mapping[str, Mapping[str, tuple[EngineSignals, float]]]:
        """region -> replica -> (signals, monotonic time of their scrape)."""
        return self.current

    def oldest_age(self, region: str) -> float | None:
        """Seconds since the oldest of ``region``'s replicas was scraped (None: none published)."""
        now = time.monotonic()
        ages = [now - at for _, at in self.current.get(region, {}).values()]
        return max(ages) if ages else None

    def take(self, raw: Mapping[str | bytes, str | bytes]) -> None:
        """Records as read; each scrape's wall-clock time becomes the monotonic time it stands for."""
        wall, mono = time.time(), time.monotonic()
        current: dict[str, dict[str, tuple[EngineSignals, float]]] = {}
        for (region, replica), s in decode_signals(raw).items():
            current.setdefault(region, {})[replica] = (s, mono - max(0.0, wall - s.at))
        self.current = current

    async def _read(self, client: aioredis.Redis) -> None:
        self.take(await client.hgetall(KEY_SIGNALS))

    async def run(self) -> None:
        await poll(
            url=self.url,
            connect=self._connect,
            interval_s=self.poll_s,
            step=self._read,
            what="engine signals",
        )
