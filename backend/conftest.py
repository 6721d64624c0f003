"""Test harness: shared embedded Postgres, per-test databases and a real server process."""

from __future__ import annotations

import os
from collections.abc import Iterator

import anyio
import pytest

from backend.connectors.embedded import EmbeddedPostgres
from backend.testing import postgres
from backend.testing.server import ServerProcess, start_server


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or os.environ.get(postgres.SERVER_ENV):
        return
    server, url = postgres.start_shared_server()
    os.environ[postgres.SERVER_ENV] = url
    config.stash[_SERVER_KEY] = server


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER_KEY, None)
    if server is not None:
        server.destroy()


_SERVER_KEY = pytest.StashKey[EmbeddedPostgres]()


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio; pure stream code parametrises its own backends."""
    return "asyncio"


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    url = anyio.run(postgres.clone_template)
    try:
        yield url
    finally:
        anyio.run(postgres.drop, url)


@pytest.fixture
def server(database_url: str) -> Iterator[ServerProcess]:
    """A real `pgcast serve` process on a free port against this test's database."""
    with start_server(database_url) as process:
        yield process


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ServerProcess]:
    """One server for a whole module, for tests that only read or make disjoint changes."""
    url = anyio.run(postgres.clone_template)
    try:
        with start_server(url) as process:
            yield process
    finally:
        anyio.run(postgres.drop, url)
