"""A small closed-loop load generator for functional tests and benchmarks: clients in several places send
requests through edges and every response is recorded (time, place, serving region, status, latency)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

CHAT = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@dataclass(frozen=True, slots=True)
class Sample:
    started: float
    finished: float
    place: str
    region: str
    status: int
    error: str = ""


@dataclass
class Load:
    """Clients (place -> (edge URL, client IP)) each running ``per_place`` request loops."""

    clients: Mapping[str, tuple[str, str]]
    per_place: int = 2
    body: dict[str, object] = field(default_factory=lambda: dict(CHAT))
    headers: dict[str, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _loop(self, session: aiohttp.ClientSession, place: str, url: str, ip: str) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                async with session.post(
                    url + "v1/chat/completions",
                    json=self.body,
                    headers={"X-Forwarded-For": ip, **self.headers},
                ) as r:
                    await r.read()
                    region = r.headers.get("X-Meridian-Region", "")
                    self.samples.append(Sample(t0, time.monotonic(), place, region, r.status))
            except aiohttp.ClientError as exc:
                self.samples.append(Sample(t0, time.monotonic(), place, "", 0, type(exc).__name__))

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        for place, (url, ip) in self.clients.items():
            for _ in range(self.per_place):
                self._tasks.append(asyncio.create_task(self._loop(self._session, place, url, ip)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    def errors(self, since: float = 0.0) -> list[Sample]:
        return [s for s in self.samples if s.started >= since and s.status != 200]

    def served(self, place: str, *, since: float, until: float = float("inf")) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            if s.place == place and since <= s.started < until and s.status == 200:
                out[s.region] = out.get(s.region, 0) + 1
        return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]
