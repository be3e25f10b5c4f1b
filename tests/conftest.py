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
