"""Fixtures for the CLI tests: one server shared by the modules in `cli/`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.testing.cli import fast_queue_server
from backend.testing.server import ServerProcess


@pytest.fixture(scope="session")
def cli_server() -> Iterator[ServerProcess]:
    """A server with fast queue retries; tests use topics and queues of their own.

    Starting a server takes seconds, so the CLI test modules share this one. A test that
    restarts it must leave a server running at the same URL (see the tail restart test).
    """
    with fast_queue_server() as server:
        yield server
