"""`pgcast serve` and `pgcast migrate` as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from backend.connectors.embedded import free_port
from backend.testing.server import wait_healthy


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(values)
    return env


def test_a_bad_setting_stops_start_up_with_one_line_and_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backend", "serve"],
        env=_env(PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pgcast: configuration error: PORT: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


@pytest.mark.external
def test_serve_uses_database_url_and_starts_no_embedded_server(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = _env(DATABASE_URL=database_url, PORT=str(port), DATA_DIR=str(tmp_path / "data"))
    process = subprocess.Popen([sys.executable, "-m", "backend", "serve"], env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        assert not (tmp_path / "data").exists()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0


def _postgres_processes(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(proc)
    return found


@pytest.mark.external
def test_serve_with_embedded_postgres_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    env = _env(PORT=str(port), DATA_DIR=str(data_dir))
    process = subprocess.Popen([sys.executable, "-m", "backend", "serve"], env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, timeout=60)
        assert _postgres_processes(data_dir), "the embedded server should be running"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    deadline = time.monotonic() + 10
    while _postgres_processes(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _postgres_processes(data_dir)
    assert (data_dir / "postgres" / "PG_VERSION").exists()
