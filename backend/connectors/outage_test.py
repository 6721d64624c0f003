"""The outage account: what it logs, and what a real server logs while PostgreSQL is down."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from backend.connectors.embedded import EmbeddedPostgres
from backend.connectors.migrations import upgrade
from backend.connectors.outage import Outage, is_unavailable
from backend.core.errors import DatabaseUnavailable
from backend.testing.server import spawn

REFUSED = ConnectionRefusedError(111, "Connection refused")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name.endswith("outage")]


def test_an_outage_is_one_warning_rate_limited_reminders_and_one_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(reminder_seconds=30, settle_seconds=5, clock=clock)
    with caplog.at_level(logging.DEBUG, "backend.connectors.outage"):
        outage.recovered()  # nothing to end
        for _ in range(100):  # 100 failures over 70 s
            outage.failed("hub read", REFUSED)
            clock.now += 0.7
        outage.recovered()
        outage.recovered()
    lines = _lines(caplog)
    assert [level for level, _ in lines] == [logging.WARNING] * 3 + [logging.INFO]
    assert lines[0][1].startswith("database unavailable (hub read): [Errno 111] Connection refused")
    assert lines[1][1].startswith("database still unavailable after 30 s (")
    assert lines[2][1].startswith("database still unavailable after 60 s (")
    assert lines[3][1] == "database available again after 70.0 s (100 failed attempts)"


def test_failures_just_after_recovery_do_not_start_another_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage(reminder_seconds=30, settle_seconds=5, clock=clock)
    with caplog.at_level(logging.INFO, "backend.connectors.outage"):
        outage.failed("sequencer", REFUSED)
        clock.now += 10
        outage.recovered()
        clock.now += 1
        outage.failed("hub read", asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
        assert outage.started is None
        clock.now += 5
        outage.failed("hub read", REFUSED)
    assert [level for level, _ in _lines(caplog)] == [
        logging.WARNING,
        logging.INFO,
        logging.WARNING,
    ]


def test_only_reachability_errors_count_as_an_outage() -> None:
    assert is_unavailable(REFUSED)
    assert is_unavailable(DatabaseUnavailable("down"))
    assert is_unavailable(asyncpg.exceptions.CannotConnectNowError("starting up"))
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = REFUSED
    assert is_unavailable(wrapped)
    assert not is_unavailable(asyncpg.exceptions.UndefinedTableError("no such table"))
    assert not is_unavailable(ValueError("a bug"))


@pytest.mark.external
@pytest.mark.timeout(120)
def test_a_real_outage_logs_one_warning_and_one_info_and_no_traceback(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg", durable=True)
    try:
        url = pg.start()
        upgrade(url)
        env = {"POLL_INTERVAL_SECONDS": "0.5", "PROBE_INTERVAL_SECONDS": "0.5"}
        server = spawn(url, extra_env=env)
        try:
            before = len(server.log())
            pg.stop("immediate")
            refused = _publish_for(server.url, seconds=3)
            pg.start()
            _wait_ready(server.url)
            time.sleep(1.5)
            log = server.log()[before:]
        finally:
            server.stop()
            server.log_path.unlink(missing_ok=True)
    finally:
        pg.destroy()
    assert refused, "no publish met the outage"
    lines = log.splitlines()
    noisy = [line for line in lines if " WARNING " in line or " ERROR " in line]
    assert len(noisy) == 1, noisy
    assert "database unavailable (" in noisy[0]
    recovered = [line for line in lines if "database available again after" in line]
    assert len(recovered) == 1
    assert " INFO " in recovered[0]
    assert "Traceback" not in log
    assert "Failed to restore the pool connection floor" not in log


def _publish_for(base: str, seconds: float) -> int:
    """Publish through the outage; returns how many publishes got 503."""
    refused = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            response = client.post(f"{base}/topics/outage/events", json={"data": 1})
            refused += response.status_code == 503
            time.sleep(0.2)
    return refused


def _wait_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the server did not recover"
        time.sleep(0.1)
