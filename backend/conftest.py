"""Test harness: a shared embedded Postgres (started on first use), per-test databases and
a real server process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from backend.testing import postgres
from backend.testing.server import ServerProcess, start_server


def pytest_configure(config: pytest.Config) -> None:
    """The controlling process names the folder for the server; workers inherit it."""
    if hasattr(config, "workerinput") or os.environ.get(postgres.SERVER_ENV):
        return
    config.stash[_STATE_KEY] = postgres.make_state_dir()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE_KEY, None)
    if state is not None:
        postgres.remove_state_dir(state)


_STATE_KEY = pytest.StashKey[Path]()

# Modules that spawn processes run first, so that on a few cores the run does not end
# waiting on one long test while the other workers sit idle. `make test` hands whole
# modules to the workers in this order (`--dist loadfile --no-loadscope-reorder`; xdist's
# default reorder, by number of tests, would put the long scenarios last).
_WEIGHTS = {"external": 2, "integrated": 1}


def _weight(item: pytest.Item) -> int:
    return max((_WEIGHTS.get(mark.name, 0) for mark in item.iter_markers()), default=0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heaviest modules first; a module's tests stay together and in their order."""
    module_weight: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        module_weight[module] = max(module_weight.get(module, 0), _weight(item))
    items.sort(key=lambda item: -module_weight[item.nodeid.split("::", 1)[0]])


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
