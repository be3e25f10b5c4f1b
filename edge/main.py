"""Run an edge process (I/O): read settings, fail fast with a clear message, serve with uvloop, optionally
fork N workers sharing the port through SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from controlplane.topology import TopologyError, format_settings_error
from edge.app import ConfigError, create_app
from edge.geo import GeoDatabaseError
from edge.settings import EdgeSettings
from edge.tracing import TracingConfigError


def _serve(settings: EdgeSettings, app: web.Application, *, reuse_port: bool) -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=reuse_port,
        print=None,
        access_log=None,
        handle_signals=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = EdgeSettings()
    except ValidationError as exc:
        print(format_settings_error(exc, source="edge"), file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s edge[{settings.region}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        app = create_app(settings)
    except (TopologyError, GeoDatabaseError, ConfigError, TracingConfigError) as exc:
        print(f"meridian edge: cannot start: {exc}", file=sys.stderr)
        return 2
    if settings.workers == 1:
        _serve(settings, app, reuse_port=False)
        return 0
    children: list[int] = []
    for _ in range(settings.workers):
        pid = os.fork()
        if pid == 0:
            _serve(settings, create_app(settings), reuse_port=True)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, _frame: object) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    return 0
