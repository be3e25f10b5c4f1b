"""One fault campaign (I/O): a real local fleet under steady client load and a stream of operator dial
writes, the seeded fault schedule applied to its processes, each edge's applied snapshot sampled, and
everything recorded in a ``History`` for the checker."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import random
import re
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fleet.state import Topology
from meridian.chaos.faults import Fault
from meridian.chaos.history import Applied, History, Ledger, Limit, Request, Revoke, Sample, Write
from meridian.chaos.proxy import FaultProxy
from meridian.demo import PortPlan
from meridian.pressure import schedule as sch
from meridian.pressure.drive import Target, drive
from meridian.pressure.fleet import CLIENT_IP, HOME, MODEL, Knobs, Running, Scale, started, topology
from meridian.redisproc import RedisServer, free_block

WRITE_EVERY_S = 0.7  # the operator's dial writes, one at a time
SAMPLE_EVERY_S = 0.1  # each edge's /readyz
DIALED = "us-east-1"  # the region the operator dials (the other always takes traffic)
SETTLE_S = 3.0  # after the last fault, before the final state is read
REVOKED = "revoked"  # the tenant whose key the operator revokes half way
REVOKE_TRIES = 20  # the revocation asked again each second while the store cannot take it
CAPPED, CAPPED_RPM = "capped", 120  # a tenant offered twice its requests-per-minute limit throughout
LINK_LATENCY_S = 0.2  # a link-latency fault's delay, each way
LINK_LOSS = 0.2  # a link-loss fault's share of segments lost
# what the simulator is told (POST /_sim/faults, regionsim/model.py) for the faults on regions and engines
SIM_FAULTS: dict[str, dict[str, object]] = {
    "region-down": {"down": True},
    "region-slow": {"extra_latency_ms": 300},
    "engine-errors": {"error_rate": 1.0, "error_status": 500},
    "engine-cut": {"cut_after_tokens": 3},
}
SKEW = "+90s"  # an edge-skew fault's clock offset (libfaketime's FAKETIME)
FAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)  # apt: faketime


@dataclass
class Campaign:
    run: Running
    links: dict[str, FaultProxy]
    faults: list[Fault]
    duration: float
    rng: random.Random
    rate: float  # client requests per second, both populations
    t0: float = 0.0
    history: History | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def go(self) -> History:
        h = self.history = History()
        keys = {
            "steady": await self.run.tenant("steady"),
            CAPPED: await self.run.tenant(CAPPED, rpm=CAPPED_RPM),
        }
        revoked_id, keys[REVOKED], key_id = await self._tenant_with_key(REVOKED)
        target = Target(
            edges={p: self.run.edge(p) for p in HOME},
            client_ip=CLIENT_IP,
            keys=keys,
            model=MODEL,
            max_tokens=Scale().tokens,
        )
        arrivals = sch.merged(
            *(
                sch.poisson(
                    sch.constant(self.rate / 2),
                    until=self.duration,
                    peak=self.rate / 2,
                    rng=self.rng,
                    population=p,
                    tenant="steady",
                )
                for p in HOME
            )
        )
        arrivals = sch.merged(  # the capped tenant at twice its limit, from both cities
            arrivals,
            *(
                sch.poisson(
                    sch.constant(CAPPED_RPM / 60),
                    until=self.duration,
                    peak=CAPPED_RPM / 60,
                    rng=self.rng,
                    population=p,
                    tenant=CAPPED,
                )
                for p in HOME
            ),
        )
        arrivals = sch.merged(  # the revoked tenant's key, used throughout from London
            arrivals,
            sch.poisson(
                sch.constant(1.0),
                until=self.duration,
                peak=1.0,
                rng=self.rng,
                population="london",
                tenant=REVOKED,
            ),
        )
        self.incarnation = dict.fromkeys(HOME.values(), 0)
        self.t0 = time.monotonic()
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(self._writer(stop)),
            asyncio.create_task(self._sampler(stop)),
            asyncio.create_task(self._revoke(revoked_id, key_id, self.duration / 2)),
            *(asyncio.create_task(self._apply(f)) for f in self.faults),
        ]
        outcomes = await drive(arrivals, target, self.t0)
        await asyncio.gather(*tasks[2:])
        await asyncio.sleep(SETTLE_S)
        stop.set()
        await asyncio.gather(*tasks[:2])
        for o in outcomes:
            edge = HOME[o.population]
            end = o.at + (o.ended_s if o.ended_s is not None else 0.0)
            h.requests.append(
                Request(o.at, end, edge, o.tenant, o.status, o.kind, o.region, o.detail, o.tokens)
            )
        regions = (await self._admin("GET", "/v1/regions"))[1]["regions"]
        h.final = {r["name"]: int(r["weight"]) for r in regions if "weight" in r}
        h.limits.append(Limit(CAPPED, CAPPED_RPM, 1.0))
        for name in ("steady", CAPPED):
            h.ledgers.append(await self._ledger(name))
        return h

    async def _ledger(self, tenant: str) -> Ledger:
        """The tenant's usage ledger as the admin API reports it (answers that did not fail, tokens)."""
        status, body = await self._admin("GET", f"/v1/tenants/{self.run.tenant_ids[tenant]}/usage")
        t = body["totals"] if status == 200 else {}
        served = int(t.get("requests", -1)) - int(t.get("errors", 0))
        return Ledger(tenant, served, int(t.get("prompt_tokens", 0)) + int(t.get("completion_tokens", 0)))

    # --- the operator ---------------------------------------------------------------------------------

    async def _writer(self, stop: asyncio.Event) -> None:
        """Dial writes one at a time, each recorded with its answer. A dial of 0 is not written while the
        other region may be down by the schedule (with both out, no region could serve: that is allowed,
        but not what this campaign tests)."""
        assert self.history is not None
        while not stop.is_set():
            t = self.now()
            other_down = any(
                _takes_a_region_out(f) and f.at - 1.0 <= t + 4.0 and t - 1.0 <= f.end for f in self.faults
            )
            weight = self.rng.choice([20, 60, 100] if other_down else [0, 20, 60, 100])
            start = self.now()
            status, _ = await self._admin(
                "PATCH", f"/v1/regions/{DIALED}", {"weight": weight, "reason": "chaos"}
            )
            self.history.writes.append(Write(start, self.now(), DIALED, weight, status))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WRITE_EVERY_S)

    async def _tenant_with_key(self, name: str) -> tuple[str, str, str]:
        """A tenant and its one key: (tenant id, the key's secret, the key's id)."""
        _, tenant = await self._admin("POST", "/v1/tenants", {"name": name, "reason": "chaos"})
        _, key = await self._admin("POST", f"/v1/tenants/{tenant['id']}/keys")
        await self.run.tenant("key-probe")  # returns once every edge takes a newer key: this one too
        return str(tenant["id"]), str(key["key"]), str(key["id"])

    async def _revoke(self, tenant_id: str, key_id: str, at: float) -> None:
        """The operator revokes the tenant's key half way through, and asks again each second while the
        answer is 503 or none (as the API's `Retry-After` says), for up to ``REVOKE_TRIES`` (every answer
        recorded)."""
        assert self.history is not None
        await asyncio.sleep(max(0.0, self.t0 + at - time.monotonic()))
        for _ in range(REVOKE_TRIES):
            start = self.now()
            status, _ = await self._admin("DELETE", f"/v1/tenants/{tenant_id}/keys/{key_id}")
            self.history.revokes.append(Revoke(start, self.now(), REVOKED, status))
            if status not in (0, 503):
                return
            await asyncio.sleep(1.0)

    async def _admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.run.token}"}
        timeout = aiohttp.ClientTimeout(total=2.0)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as s,
                s.request(method, self.run.admin + path, json=body, headers=headers) as r,
            ):
                return r.status, await r.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return 0, None

    # --- the edges' applied snapshots -----------------------------------------------------------------

    async def _sampler(self, stop: asyncio.Event) -> None:
        assert self.history is not None
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            while not stop.is_set():
                for edge, url in self.run.ready["edges"].items():
                    incarnation = self.incarnation[edge]
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
                        async with s.get(url + "/readyz") as r:
                            body = await r.json()
                        self.history.samples.append(
                            Sample(
                                self.now(),
                                edge,
                                incarnation,
                                body.get("snapshot_epoch"),
                                body.get("snapshot_version"),
                            )
                        )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)

    # --- the faults -----------------------------------------------------------------------------------

    async def _apply(self, f: Fault) -> None:
        assert self.history is not None
        await asyncio.sleep(max(0.0, self.t0 + f.at - time.monotonic()))
        start = self.now()
        undo = await self._inflict(f)
        await asyncio.sleep(f.duration)
        await undo()
        self.history.faults.append(Applied(start, self.now(), f.kind, f.target))

    async def _inflict(self, f: Fault) -> Any:
        fleet = self.run.fleet
        kind, region = f.kind, f.target
        if kind in ("primary-kill", "primary-wipe"):
            primary = fleet.redis[0]
            assert primary.proc is not None
            primary.proc.kill()
            primary.proc.wait()
            if kind == "primary-wipe":
                for item in primary.workdir.iterdir():
                    if item.name != "users.acl" and not item.name.endswith(".log"):
                        shutil.rmtree(item) if item.is_dir() else item.unlink()
            return lambda: asyncio.to_thread(primary.start)
        if kind == "primary-full":
            primary = fleet.redis[0]
            await asyncio.to_thread(_config_set, primary, "maxmemory", "1")
            return lambda: asyncio.to_thread(_config_set, primary, "maxmemory", "0")
        if kind in ("replica-kill", "replica-pause"):
            replica = self._replica(region)
            assert replica.proc is not None
            if kind == "replica-pause":
                pid = replica.proc.pid
                os.kill(pid, signal.SIGSTOP)
                return lambda: _resume(pid)
            replica.proc.kill()
            replica.proc.wait()
            return lambda: asyncio.to_thread(replica.start)
        if kind.startswith("link"):
            proxies = self._links(region)
            for proxy in proxies:
                if kind == "link-reset":
                    proxy.reset()
                elif kind == "link-loss":
                    proxy.set("loss", loss=LINK_LOSS)
                else:
                    proxy.set("partition" if kind == "link-partition" else "latency", LINK_LATENCY_S)

            async def heal() -> None:
                for proxy in proxies:
                    proxy.set("pass")

            return heal
        if kind in ("edge-kill", "controlplane-kill", "edge-skew"):
            name = "controlplane" if kind == "controlplane-kill" else f"edge-{region}"
            proc = fleet.process(name)
            proc.kill()
            proc.wait()
            url = self.run.admin if kind == "controlplane-kill" else self.run.ready["edges"][region]
            if kind == "edge-skew":  # on skewed clocks for the fault's duration, then on true time again
                assert FAKETIME is not None
                fleet.restart(name, {"LD_PRELOAD": FAKETIME, "FAKETIME": SKEW})
                self.incarnation[region] += 1
                await _listening(url)

            async def restart() -> None:  # the fault lasts until the process listens again
                if kind == "edge-skew":
                    skewed = fleet.process(name)
                    skewed.kill()
                    await asyncio.to_thread(skewed.wait)
                fleet.restart(name)
                if kind != "controlplane-kill":
                    self.incarnation[region] += 1
                await _listening(url)

            return restart
        if kind.startswith("engine"):
            slots = [await self._serving_engine(f)]
        else:
            slots = list(self.run.slots(region).values())
        body = SIM_FAULTS[kind]
        await asyncio.gather(*(self.run.sim(u, "/_sim/faults", body) for u in slots))

        async def clear() -> None:
            await asyncio.gather(*(self.run.sim(u, "/_sim/faults", {}) for u in slots))

        return clear

    async def _serving_engine(self, f: Fault) -> str:
        """One of the fault's region's engines that serves now (its machine on and started: the autoscaler
        keeps the rest off), chosen by the fault's time, so a schedule hits the same slot again."""
        slots = sorted(self.run.slots(f.target).items())
        serving = [url for _, url in slots if (await self.run.sim_power(url)).get("serving")]
        return random.Random(f"{f.at}").choice(serving or [url for _, url in slots])

    def _links(self, target: str) -> list[FaultProxy]:
        """A link fault's proxies: "" the control plane's to the primary; "e" edge e's to its replica;
        "e:primary" its to the primary; "e:r" its to every simulated replica of region r."""
        edge, _, upstream = target.partition(":")
        if not edge:
            return [self.links["controlplane-primary"]]
        if upstream in ("", "primary"):
            return [self.links[f"edge-{edge}-{upstream or 'replica'}"]]
        return [p for name, p in self.links.items() if name.startswith(f"edge-{edge}-region-{upstream}-")]

    def _replica(self, region: str) -> Any:
        names = [r.name for r in self.run.topo.regions]
        return self.run.fleet.redis[1 + names.index(region)]


async def _listening(url: str, timeout: float = 30.0) -> None:
    """Until a restarted process accepts connections on ``url``'s port (or ``timeout`` passed)."""
    host, port = url.split("//", 1)[1].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, int(port.split("/")[0]))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


def _takes_a_region_out(f: Fault) -> bool:
    """A region down, or an edge cut off from one: with a dial of 0 on the other, no region could serve."""
    end = f.target.partition(":")[2]
    return f.kind == "region-down" or (f.kind == "link-partition" and end not in ("", "primary"))


def _config_set(server: RedisServer, name: str, value: str) -> None:
    client = server.client()
    try:
        client.config_set(name, value)
    finally:
        client.close()


async def _resume(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def fleet(logs: Path, seed: int = 0) -> Any:
    """The campaign's fleet: the pressure tests' (two regions, the shipped ACL users and persistence, the
    autoscaler on the simulator backend), pools at their minimum; every Redis link of a component through a
    TCP fault proxy the campaign controls. Yields (the running fleet, link name -> its proxy)."""
    scale, knobs = Scale(), Knobs()
    base = free_block(80)
    plan = PortPlan.of(Topology.model_validate(topology(scale, knobs)), base)
    targets = {"controlplane-primary": plan.primary}
    for region, port in plan.replicas.items():
        targets[f"edge-{region}-replica"] = port
        targets[f"edge-{region}-primary"] = plan.primary
        for (served, replica), sim in plan.sims.items():  # each edge's link to each simulated replica
            targets[f"edge-{region}-region-{served}-{replica}"] = sim
    rng = random.Random(seed)
    links = {name: await FaultProxy("127.0.0.1", port, rng).start() for name, port in targets.items()}

    def via(link: str, url: str) -> str:
        proxy = links.get(link)
        return url if proxy is None else re.sub(rf":{proxy.target[1]}(?=/|$)", f":{proxy.port}", url)

    try:
        ops = secrets.token_urlsafe(12)  # the campaign's own user on the primary: primary-full sets maxmemory
        async with started(scale, knobs, logs / "chaos.log", base=base, via=via, ops=ops) as run:
            yield run, links
    finally:
        for proxy in links.values():
            await proxy.close()
