"""`meridian demo` (I/O): start a whole local fleet as child processes, print one ready line of JSON, and
stop every child on Ctrl-C / SIGTERM.

Fleet for N ≤ 9 regions at base port B: admin API on B, edges on B+1..B+N (topology order), Redis primary on
B+10 and one replica per region on B+11.., simulated replicas from B+20 on, the edges' internal listeners
(metrics, route explainer) from B+50; from 10 regions on the same order, packed (see PortPlan).
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleet.acl import CONTROL_PLANE, Credentials, edge_user
from fleet.state import Topology, distance_rtt_ms
from fleet.topology import TopologyError, load_topology
from meridian.redisproc import RedisNotFound, RedisServer, port_free, spawn

log = logging.getLogger("meridian.demo")

READY_TIMEOUT_S = 45.0


def geoip_db() -> str:
    env = os.environ.get("MERIDIAN_GEOIP_DB")
    if env:
        return env
    try:
        from _maxminddb_geolite2 import geolite2_database
    except ImportError:
        raise SystemExit("meridian demo: set MERIDIAN_GEOIP_DB or `pip install maxminddb-geolite2`") from None
    path: str = geolite2_database()
    return path


def state_file(base_port: int) -> Path:
    """Where the demo at ``base_port`` leaves its ready line (0600) so `meridian ctl` finds its admin URL
    and token: one file per running demo, removed by that demo only."""
    return Path(tempfile.gettempdir()) / f"meridian-demo-{os.getuid()}-{base_port}.json"


def running_demos() -> dict[int, Path]:
    """Base port -> state file of every demo of this user that is running now."""
    out = {}
    for path in Path(tempfile.gettempdir()).glob(f"meridian-demo-{os.getuid()}-*.json"):
        base = path.stem.rsplit("-", 1)[-1]
        if base.isdigit():
            out[int(base)] = path
    return out


def local_topology(topo: Topology, ports: dict[tuple[str, str], int]) -> dict[str, Any]:
    data = topo.model_dump(mode="json")
    for region in data["regions"]:
        for rep in region["replicas"]:
            rep["url"] = f"http://127.0.0.1:{ports[(region['name'], rep['name'])]}"
    return data


def sim_model_args(topo: Topology, region: str) -> list[str]:
    """The simulator's flags for what each replica of ``region`` serves, from the model catalog."""
    catalog = topo.catalog
    if catalog.open:
        return []
    args = [f"--adapter={name}={spec.base}" for name, spec in catalog.models.items() if spec.base]
    for (reg, rep), models in sorted(catalog.served.items()):
        if reg == region:
            args.append(f"--serves={rep}={','.join(sorted(models))}")
    return args


def _get(url: str, timeout: float = 1.0, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=timeout
        ) as resp:
            return int(resp.status)
    except Exception:
        return 0


def _post(url: str, token: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """An admin API call that must succeed (the demo's own set-up)."""
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def emulated_rtt(topo: Topology, region: str) -> dict[str, float]:
    """The round trip from every edge's region to ``region``, from distance (what the simulator emulates)."""
    here = topo.by_name[region].location
    return {r.name: distance_rtt_ms(r.location, here, topo.policy) for r in topo.regions}


@dataclass(frozen=True, slots=True)
class PortPlan:
    """Where each part of a demo listens. Up to 9 regions the documented plan (edges from B+1, Redis
    primary B+10, replicas from B+11, simulated replicas from B+20); from 10 regions on, the same order
    packed so nothing overlaps (edges, primary, replicas, then simulated replicas)."""

    admin: int
    edges: dict[str, int]
    primary: int
    replicas: dict[str, int]
    sims: dict[tuple[str, str], int]
    internal: dict[str, int]  # each edge's internal listener (metrics, route explainer)

    @classmethod
    def of(cls, topo: Topology, base: int) -> PortPlan:
        n = len(topo.regions)
        primary, sims_from = (base + 10, base + 20) if n <= 9 else (base + n + 1, base + 2 * n + 2)
        edges = {r.name: base + 1 + i for i, r in enumerate(topo.regions)}
        replicas = {r.name: primary + 1 + i for i, r in enumerate(topo.regions)}
        sims = {}
        port = sims_from
        for region in topo.regions:
            for rep in region.replicas:
                sims[(region.name, rep.name)] = port
                port += 1
        internal_from = max(port, base + 50) if n <= 9 else port
        internal = {r.name: internal_from + i for i, r in enumerate(topo.regions)}
        return cls(base, edges, primary, replicas, sims, internal)

    def described(self) -> dict[int, str]:
        """Every port, and what listens there."""
        ports = {self.admin: "admin API", self.primary: "Redis primary"}
        ports.update({p: f"edge {name}" for name, p in self.edges.items()})
        ports.update({p: f"edge {name} (internal)" for name, p in self.internal.items()})
        ports.update({p: f"Redis replica {name}" for name, p in self.replicas.items()})
        ports.update({p: f"simulated replica {rep}" for (_, rep), p in self.sims.items()})
        return ports


def fleet_ports(topo: Topology, base: int) -> dict[int, str]:
    """Every port a demo at ``base`` listens on, and what listens there (see PortPlan)."""
    return PortPlan.of(topo, base).described()


class PortsTaken(RuntimeError):
    """The demo cannot start at this base port; the message names the port and what to do."""


def claim_ports(topo: Topology, base: int) -> int:
    """Before anything starts: hold this base port's lock (a second demo on it stops here, even when both
    start at once) and check every port the fleet needs is free. Returns the lock's file descriptor."""
    lock = Path(tempfile.gettempdir()) / f"meridian-demo-port-{base}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PortsTaken(
            f"another demo is running on --base-port {base} (lock {lock}); stop it with Ctrl-C, "
            f"or start this one with another --base-port (e.g. {base + 100})"
        ) from None
    for port, what in fleet_ports(topo, base).items():
        if not port_free(port):
            os.close(fd)
            raise PortsTaken(
                f"port {port} ({what}) is in use; stop whatever listens there, "
                f"or start the demo with another --base-port (e.g. {base + 100})"
            )
    return fd


class Fleet:
    def __init__(
        self,
        topo: Topology,
        base_port: int,
        workdir: Path,
        *,
        network: bool = True,
        simulated: bool = True,
        sim_args: tuple[str, ...] = (),
        sims_off: frozenset[str] = frozenset(),
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
        via: Callable[[str, str], str] | None = None,
        ops: str | None = None,
    ) -> None:
        self.topo = topo
        self.sim_args = sim_args  # the simulators' engine (e.g. --max-concurrency), for every region
        self.sims_off = sims_off  # replica slots whose machine starts switched off (a pool at its minimum)
        self.env = env or {}  # MERIDIAN_* tuning for every component (under the wiring)
        self.log_file = log_file  # where the children log (None: this process's stderr)
        # (link, Redis URL) -> the URL a component dials for it (a fault campaign's proxy; default: as is)
        self.via = via or (lambda _link, url: url)
        self.ops = ops  # a fault campaign's own user on the primary (redisproc.OPS_USER), never a component's
        self.network = network
        self.simulated = simulated  # False: `meridian up`, the replicas regions.yaml names, as written
        self.real_regions: Path | None = None  # `meridian up`'s regions file, used as it is
        self.base = base_port
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.specs: dict[str, tuple[list[str], dict[str, str]]] = {}  # name -> how it was started
        self.redis: list[RedisServer] = []
        self.token = os.environ.get("MERIDIAN_DEMO_TOKEN") or secrets.token_urlsafe(24)
        # least privilege on the store: a Redis ACL user each for the control plane, every edge, replication
        self.acl = Credentials(
            control_plane=secrets.token_urlsafe(18),
            replication=secrets.token_urlsafe(18),
            edges={r.name: secrets.token_urlsafe(18) for r in topo.regions},
        )
        self.viewer_token = secrets.token_urlsafe(24)
        self.key_secret = secrets.token_urlsafe(32)  # API-key digests: the control plane's and the edges'
        self.api_key = ""

    def _child(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        # MERIDIAN_* tuning from the caller's environment passes through (e.g. MERIDIAN_HEDGE_QUANTILE);
        # the wiring below (ports, URLs, files, tokens) always wins
        full = {k: v for k, v in os.environ.items() if k != "MERIDIAN_DEMO_TOKEN"}
        full.update(self.env)
        full.update(env)
        self.specs[name] = (argv, full)
        self.procs.append((name, self._spawn(argv, full)))

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        if self.log_file is not None:
            return spawn(argv, env=env, log=self.log_file)
        return spawn(argv, env=env, stdout=sys.stderr.fileno())

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The running child called ``name`` (``controlplane``, ``edge-<region>``, ``sim-<region>``)."""
        return next(p for n, p in reversed(self.procs) if n == name)

    def restart(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start child ``name`` again as it was first started (after it died or was killed), with ``env``
        added to its environment this once (e.g. the fault campaign's skewed clock)."""
        argv, first = self.specs[name]
        proc = self._spawn(argv, {**first, **(env or {})})
        self.procs = [(n, p) for n, p in self.procs if n != name] + [(name, proc)]
        return proc

    def start(self) -> dict[str, Any]:
        topo, base = self.topo, self.base
        n = len(topo.regions)
        acl = self.acl
        plan = PortPlan.of(topo, base)
        primary = RedisServer(
            port=plan.primary, workdir=self.workdir / "redis-primary", acl=acl, ops=self.ops
        ).start()
        self.history_url = primary.url_for(CONTROL_PLANE)  # the control plane's user: `meridian capacity`
        self.redis.append(primary)
        replicas = {}
        for region in topo.regions:
            rs = RedisServer(
                port=plan.replicas[region.name],
                workdir=self.workdir / f"redis-{region.name}",
                replicaof=primary.port,
                acl=acl,
            ).start()
            replicas[region.name] = rs
            self.redis.append(rs)
        ports = plan.sims
        regions_file = self.workdir / "regions.local.yaml"
        local = (
            local_topology(topo, ports) if self.simulated else topo.model_dump(mode="json", exclude_none=True)
        )
        regions_file.write_text(yaml.safe_dump(local, sort_keys=False))
        py = sys.executable
        for region in topo.regions if self.simulated else ():
            args = [py, "-m", "regionsim", "--region", region.name]
            for rep in region.replicas:
                args += ["--replica", f"{rep.name}=127.0.0.1:{ports[(region.name, rep.name)]}"]
            args += sim_model_args(topo, region.name)
            args += self.sim_args
            args += [
                arg for rep in region.replicas if rep.name in self.sims_off for arg in ("--off", rep.name)
            ]
            if self.network:  # each region answers each edge after their round trip: the demo has physics
                for edge, ms in emulated_rtt(topo, region.name).items():
                    args += ["--rtt", f"{edge}={ms:.1f}"]
            self._child(f"sim-{region.name}", args, {})
        tokens = [
            {"name": "demo-operator", "role": "operator", "token": self.token},
            {"name": "demo-viewer", "role": "viewer", "token": self.viewer_token},
        ]
        self._child(
            "controlplane",
            [py, "-m", "controlplane"],
            {
                "MERIDIAN_REGIONS_FILE": str(regions_file),
                "MERIDIAN_REDIS_URL": self.via("controlplane-primary", primary.url_for(CONTROL_PLANE)),
                "MERIDIAN_PORT": str(base),
                "MERIDIAN_ADMIN_TOKENS": json.dumps(tokens),
                "MERIDIAN_PROBE_INTERVAL_S": self.env.get("MERIDIAN_PROBE_INTERVAL_S", "1"),
                "MERIDIAN_KEY_SECRET": self.key_secret,
                # regions.yaml's pools switch the simulated replicas; real ones are KEDA's (meridian k8s)
                "MERIDIAN_AUTOSCALER": self.env.get(
                    "MERIDIAN_AUTOSCALER", "simulator" if self.simulated else "off"
                ),
            },
        )
        db = geoip_db()
        for region in topo.regions:
            self._child(
                f"edge-{region.name}",
                [py, "-m", "edge"],
                {
                    "MERIDIAN_REGION": region.name,
                    "MERIDIAN_REGIONS_FILE": str(self._edge_regions(region.name, local, regions_file)),
                    "MERIDIAN_REDIS_URL": self.via(
                        f"edge-{region.name}-replica", replicas[region.name].url_for(edge_user(region.name))
                    ),
                    "MERIDIAN_REDIS_PRIMARY_URL": self.via(
                        f"edge-{region.name}-primary", primary.url_for(edge_user(region.name))
                    ),
                    "MERIDIAN_HOST": "127.0.0.1",
                    "MERIDIAN_PORT": str(plan.edges[region.name]),
                    "MERIDIAN_INTERNAL_PORT": str(plan.internal[region.name]),
                    "MERIDIAN_GEOIP_DB": db,
                    "MERIDIAN_TRUSTED_PROXIES": "127.0.0.0/8,::1/128",
                    "MERIDIAN_KEY_SECRET": self.key_secret,
                },
            )
        return {
            "ready": True,
            "admin": {
                "url": f"http://127.0.0.1:{base}",
                "token": self.token,
                "viewer_token": self.viewer_token,
            },
            "edges": {name: f"http://127.0.0.1:{p}" for name, p in plan.edges.items()},
            "edges_internal": {name: f"http://127.0.0.1:{p}" for name, p in plan.internal.items()},
            "regions": {
                r.name: {
                    "replicas": [
                        f"http://127.0.0.1:{ports[(r.name, rep.name)]}" if self.simulated else rep.base_url
                        for rep in r.replicas
                    ]
                }
                for r in topo.regions
            },
            "redis": {"primary": primary.url, "replicas": {k: v.url for k, v in replicas.items()}},
            "_n": n,
        }

    def _edge_regions(self, edge: str, local: dict[str, Any], shared: Path) -> Path:
        """The regions file ``edge`` reads: the fleet's, unless ``via`` puts something (the fault campaign's
        proxy) on its links to the simulated replicas: then its own, each replica's URL as this edge dials
        it (link ``edge-<edge>-region-<region>-<replica>``)."""
        data = copy.deepcopy(local)
        changed = False
        for region in data["regions"] if self.simulated else ():
            for rep in region["replicas"]:
                url = self.via(f"edge-{edge}-region-{region['name']}-{rep['name']}", rep["url"])
                changed |= url != rep["url"]
                rep["url"] = url
        if not changed:
            return shared
        path = self.workdir / f"regions.{edge}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def wait_ready(self, ready: dict[str, Any], stop: threading.Event) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for rs in self.redis:
            rs.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
        pending = [f"{ready['admin']['url']}/readyz"]
        if self.simulated:  # real replicas are whatever they are: the edges' /readyz says what is routable
            pending += [
                u + "/health"
                for region in self.topo.regions
                for rep, u in zip(region.replicas, ready["regions"][region.name]["replicas"], strict=True)
                if rep.name not in self.sims_off  # a machine switched off is up when the autoscaler says
            ]
            pending += [u + "/readyz" for u in ready["edges"].values()]
        else:
            pending += [u + "/healthz" for u in ready["edges"].values()]
        while pending:
            if stop.is_set():
                raise KeyboardInterrupt
            self.check_children()
            if time.monotonic() > deadline:
                raise TimeoutError(f"fleet not ready after {READY_TIMEOUT_S}s; waiting for {pending}")
            pending = [u for u in pending if _get(u) != 200]
            if pending:
                stop.wait(0.1)

    def issue_demo_key(self, ready: dict[str, Any], stop: threading.Event) -> None:
        """A tenant that may use every model and priority, with limits far above the tour and the benchmarks,
        and its key; the ready line carries it (``api_key``) once every edge accepts it."""
        admin = ready["admin"]["url"]
        tenant = _post(
            admin + "/v1/tenants",
            self.token,
            {
                "name": "demo",
                "priority": "normal",
                "max_priority": "critical",
                "limits": {"rpm": 1_000_000, "tpm": 1_000_000_000},
                "reason": "the demo's tenant",
            },
        )
        key = _post(f"{admin}/v1/tenants/{tenant['id']}/keys", self.token, None)
        self.api_key = ready["api_key"] = key["key"]
        ready["tenant"] = tenant["id"]
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = [u + "/v1/models" for u in ready["edges"].values()]
        while pending:
            if stop.is_set():
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"edges did not take the demo's API key within {READY_TIMEOUT_S}s: {pending}"
                )
            pending = [
                u for u in pending if _get(u, headers={"Authorization": f"Bearer {self.api_key}"}) != 200
            ]
            if pending:
                stop.wait(0.1)

    def check_children(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with status {p.returncode}")
        for rs in self.redis:  # the store may fail: report it and bring it back, the fleet rides it out
            if rs.proc is not None and rs.proc.poll() is not None:
                log.warning(
                    "redis-server on %d exited (status %s); restarting it from its data in %s",
                    rs.port,
                    rs.proc.returncode,
                    rs.workdir,
                )
                rs.start()

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for rs in self.redis:
            rs.stop()


def run(*, config: str, base_port: int, network: bool = True, simulated: bool = True) -> int:
    """``meridian demo`` (simulated regions), or ``meridian up`` (``simulated`` False: the control plane,
    Redis and edges in front of the replicas the file names)."""
    name = "demo" if simulated else "up"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s demo %(message)s")
    try:
        topo = load_topology(config)
    except TopologyError as exc:
        print(f"meridian {name}: {exc}", file=sys.stderr)
        return 2
    try:
        lock = claim_ports(topo, base_port)
    except PortsTaken as exc:
        print(f"meridian {name}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="meridian-demo-"))
    fleet = Fleet(topo, base_port, workdir, network=network, simulated=simulated)
    if not simulated:
        fleet.real_regions = Path(config).resolve()
    code = 0
    sf = state_file(base_port)
    try:
        started = time.monotonic()
        ready = fleet.start()
        ready.pop("_n")
        fleet.wait_ready(ready, stop)
        fleet.issue_demo_key(ready, stop)
        line = json.dumps(ready)
        fd = os.open(sf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:  # the file (its user's only) also says how to read the traffic history
            f.write(json.dumps({**ready, "history_url": fleet.history_url}) + "\n")
        log.info("fleet ready in %.1fs (work dir %s); Ctrl-C stops it", time.monotonic() - started, workdir)
        print(line, flush=True)
        while not stop.wait(0.5):
            fleet.check_children()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError, RedisNotFound) as exc:
        print(f"meridian {name}: {exc}", file=sys.stderr)
        code = 1
    finally:
        log.info("stopping the fleet")
        fleet.stop()
        sf.unlink(missing_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
        os.close(lock)
    return code
