"""Shared fixtures: a clean MERIDIAN_* environment, a test City .mmdb, and a whole local fleet."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fleet import Fleet, ServerFactory, start_fleet
from tests.geodb import build_city_db


@pytest.hookimpl(trylast=True)  # after -m has deselected: the order of what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist the tests marked slow run first, spread over the workers: work stealing hands each worker a
    contiguous share of the collection and runs it in order, so a long test collected late would be the
    run's tail while the others sit idle."""
    workers = config.getoption("numprocesses", default=None)
    if not isinstance(workers, int) or workers < 2:
        return
    slow = [it for it in items if it.get_closest_marker("slow")]
    rest = iter([it for it in items if not it.get_closest_marker("slow")])
    ordered: list[pytest.Item] = []
    left = len(items)
    for k in range(workers):  # the shares as xdist cuts them: what is left over the workers left
        size = left // (workers - k)
        share = slow[k::workers]
        ordered += share + [next(rest) for _ in range(max(0, size - len(share)))]
        left -= size
    ordered += list(rest)
    if len(ordered) == len(items):  # every test once (more slow tests than a share holds: left as they were)
        items[:] = ordered


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("MERIDIAN_"):
            monkeypatch.delenv(key)
    yield


@pytest.fixture(scope="session")
def geo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_city_db(tmp_path_factory.mktemp("geo") / "city.mmdb")


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Start aiohttp apps on free loopback ports (real sockets); closed newest first after the test."""
    servers: list[TestServer] = []

    async def start(app: web.Application, **kwargs: Any) -> TestServer:
        server = TestServer(app, host="127.0.0.1", **kwargs)
        await server.start_server(shutdown_timeout=2.0)
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        try:
            await asyncio.wait_for(server.close(), timeout=15)
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            raise


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, serve, geo_db=geo_db)
    try:
        yield f
    finally:
        await f.close()
