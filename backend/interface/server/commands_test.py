"""`pgcast serve` and `pgcast migrate` as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _unreachable_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/app"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unreachable_database_is_one_line_and_status_3(command: str) -> None:
    result = _run(command, DATABASE_URL=_unreachable_url(), LOG_LEVEL="ERROR")
    assert result.returncode == 3, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("pgcast: cannot connect to the database: "), line


@pytest.mark.external
@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda url: url.rsplit("/", 1)[0] + "/no_such_db", 'database "no_such_db" does not exist'),
        (
            lambda url: url.replace("postgres@", "no_such_role@", 1),
            'role "no_such_role" does not exist',
        ),
    ],
    ids=["database", "role"],
)
def test_a_wrong_database_or_role_is_one_line_and_status_2(
    database_url: str, command: str, change: Callable[[str], str], problem: str
) -> None:
    wrong = change(database_url)
    assert wrong != database_url
    result = _run(command, DATABASE_URL=wrong, PORT=str(free_port()), LOG_LEVEL="ERROR")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"pgcast: configuration error: DATABASE_URL: {problem}"]


@pytest.mark.external
def test_capture_tables_naming_a_missing_table_is_one_line_and_status_2(
    database_url: str,
) -> None:
    expected = "pgcast: configuration error: CAPTURE_TABLES: table public.nope does not exist"
    env = {"DATABASE_URL": database_url, "CAPTURE_TABLES": "public.nope"}
    quiet = _run("serve", PORT=str(free_port()), LOG_LEVEL="ERROR", **env)
    assert quiet.returncode == 2, quiet.stderr
    assert quiet.stderr.splitlines() == [expected]
    chatty = _run("serve", PORT=str(free_port()), LOG_LEVEL="INFO", **env)
    assert chatty.returncode == 2
    assert "Traceback" not in chatty.stderr
    assert " ERROR " not in chatty.stderr
    assert chatty.stderr.splitlines()[-1] == expected
    workers = _run("serve", PORT=str(free_port()), LOG_LEVEL="ERROR", WORKERS="2", **env)
    assert workers.returncode == 2, workers.stderr
    assert set(workers.stderr.splitlines()) == {expected}  # each worker that tried says so
