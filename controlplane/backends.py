"""Where the autoscaler's decisions are carried out (I/O): on Kubernetes nothing here (KEDA reads the desired
replicas from the admin API, ``NoBackend``); with the simulator, its replica slots' power and spot-notice
endpoints (``SimulatorBackend``, the only client of ``/_sim/*``)."""

from __future__ import annotations

from typing import Literal, Protocol

import aiohttp

Kind = Literal["on_demand", "spot"]


class Backend(Protocol):
    """Where replicas are switched on and off."""

    async def switch(self, url: str, *, on: bool, kind: Kind, cold_start_s: float) -> None: ...

    async def powered(self, url: str) -> bool | None:
        """Whether the slot's machine is on now (None: the backend cannot tell)."""
        ...

    async def notice(self, url: str) -> str | None:
        """The machine's interruption notice (when it goes), or None."""
        ...

    async def close(self) -> None: ...


class NoBackend:
    """Kubernetes: KEDA reads the desired replicas from the admin API; nothing is switched here."""

    async def switch(self, url: str, *, on: bool, kind: Kind, cold_start_s: float) -> None:
        return None

    async def powered(self, url: str) -> bool | None:
        return None  # the Deployment's replicas are the HPA's

    async def notice(self, url: str) -> str | None:
        return None  # a node agent calls POST /v1/pools/{region}/{model}/interruptions

    async def close(self) -> None:
        return None


class SimulatorBackend:
    """The simulator's replica slots: ``POST /_sim/power``."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    async def switch(self, url: str, *, on: bool, kind: Kind, cold_start_s: float) -> None:
        body = {"on": on, "cold_start_s": cold_start_s, "capacity": kind}
        async with self._client().post(url + "/_sim/power", json=body) as resp:
            resp.raise_for_status()

    async def powered(self, url: str) -> bool | None:
        """``GET /_sim/power``: whether the slot's machine is on (None: the slot does not answer)."""
        try:
            async with self._client().get(url + "/_sim/power") as resp:
                resp.raise_for_status()
                return bool((await resp.json())["on"])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError):
            return None

    async def notice(self, url: str) -> str | None:
        """``GET /_sim/notice``: the simulator's spot instance-action metadata (404: none)."""
        async with self._client().get(url + "/_sim/notice") as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            body = await resp.json()
        return f"{body['action']} at {body['time']}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
