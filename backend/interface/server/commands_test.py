"""`pgcast serve`, `pgcast migrate` and `pgcast db` as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from backend.connectors.database import without_password
from backend.connectors.embedded import free_port
from backend.core.allocator import for_other_programs, jemalloc_library
from backend.testing.cli import Lines
from backend.testing.server import stop_process, wait_healthy


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


def _pgcast(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backend", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.external
@pytest.mark.timeout(120)  # initdb of a fresh data directory, then six CLI processes
def test_serve_with_embedded_postgres_prints_its_url_and_ctrl_c_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    port, pg_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = _env(PORT=str(port), DATA_DIR=str(data_dir), EMBEDDED_PG_PORT=str(pg_port))
    pg_url = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
    process = subprocess.Popen(
        [sys.executable, "-m", "backend", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    log = Lines(process.stderr)
    try:
        log.wait_for(lambda line: line.endswith(f"database {pg_url}"), timeout=60)
        wait_healthy(f"http://127.0.0.1:{port}", process, timeout=60)  # type: ignore[arg-type]
        assert _postgres_processes(data_dir), "the embedded server should be running"
        assert _pgcast(env, "db", "url").stdout == pg_url + "\n"
        script = (
            "CREATE TABLE t (n int, doc jsonb);\n"
            "INSERT INTO t VALUES (1, '{\"a\": [1, 2]}'), (2, NULL);\n"
            "SELECT n,\n       doc FROM t ORDER BY n;\n"
            "CREATE FUNCTION twice(n int) RETURNS int LANGUAGE plpgsql AS $$\n"
            "BEGIN\n  RETURN n * 2;\nEND $$;\n"
            "SELECT twice(21);\n"
        )
        shell = _pgcast(env, "db", "shell", stdin=script)
        assert (shell.returncode, shell.stderr) == (0, "")
        assert shell.stdout.splitlines() == [
            "CREATE TABLE",
            "INSERT 0 2",
            "n | doc",
            '1 | {"a":[1,2]}',
            "2 | ",
            "(2 rows)",
            "CREATE FUNCTION",
            "twice",
            "42",
            "(1 row)",
        ]
        failed = _pgcast(env, "db", "shell", stdin="SELECT nope;\nSELECT 1 AS one;\n")
        assert failed.returncode == 1
        assert failed.stdout.splitlines() == ["one", "1", "(1 row)"]
        assert failed.stderr.startswith('ERROR: UndefinedColumnError: column "nope"')
        one = _pgcast(env, "db", "shell", "-c", "SELECT count(*) AS rows FROM t")
        assert one.stdout.splitlines() == ["rows", "2", "(1 row)"]
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        log.rest()
        process.stderr.close()
    deadline = time.monotonic() + 10
    while _postgres_processes(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _postgres_processes(data_dir)
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    stopped = _pgcast(env, "db", "url")
    assert stopped.stdout == pg_url + "\n"
    assert "not running" in stopped.stderr


def test_serve_stops_with_one_line_when_the_embedded_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pg_port = taken.getsockname()[1]
        env = _env(DATA_DIR=str(tmp_path / "data"), EMBEDDED_PG_PORT=str(pg_port))
        result = _pgcast(env, "serve")
    assert result.returncode == 2  # a setting to change: docs/operations.md, exit statuses
    assert [line for line in result.stderr.splitlines() if line.startswith("pgcast:")] == [
        f"pgcast: configuration error: port {pg_port} for the embedded PostgreSQL is taken"
        " by another program;"
        " set EMBEDDED_PG_PORT to a free port, or DATABASE_URL to use another PostgreSQL"
    ]


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        (
            "postgresql://app:s3cret@db:5432/app?sslmode=require",
            "postgresql://app@db:5432/app?sslmode=require",
        ),
        ("postgresql://:s3cret@db/app", "postgresql://db/app"),
        (
            "postgresql://postgres@127.0.0.1:54329/postgres",
            "postgresql://postgres@127.0.0.1:54329/postgres",
        ),
    ],
)
def test_the_database_url_is_printed_without_its_password(url: str, printed: str) -> None:
    assert without_password(url) == printed


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


@pytest.mark.parametrize(
    ("args", "env", "status", "says"),
    [
        ([b"publish", b"\xff", b"{}"], {}, 2, "bytes that are not UTF-8 (0xff)"),
        ([b"topics", b"--token", "é".encode()], {}, 2, "'é', which cannot be sent"),
        (
            [b"db", b"shell", b"-c", b"select 1"],
            {"DATABASE_URL": "postgresql://h:99999/x"},
            2,
            "DATABASE_URL: ",
        ),
        ([b"migrate"], {"DATABASE_URL": "postgresql://[bad"}, 2, "DATABASE_URL: "),
        ([b"migrate"], {"DATABASE_URL": "postgresql://127.0.0.1:9/x?sslmode=bogus"}, 2, "sslmode"),
        ([b"db", b"url"], {"DATA_DIR": "/dev/null/x"}, 2, "as a data directory: Not a directory"),
        ([b"queue", b"work", b"q", b"--", b"/tmp"], {}, 2, "cannot run /tmp: Is a directory"),
        ([b"publish", b"", b"{}"], {}, 2, "topic '': must not be empty"),
        ([b"queue", b"stats", b"a/b"], {}, 2, "invalid character '/'"),
        ([b"capture", b"remove", b""], {}, 2, "invalid table ''"),
    ],
    ids=[
        "non-utf8-argument",
        "non-ascii-token",
        "url-port",
        "url-ipv6",
        "url-option",
        "data-dir",
        "dir-cmd",
        "empty-topic",
        "slashed-queue",
        "empty-table",
    ],
)
def test_unusable_arguments_and_variables_are_one_line(
    args: list[bytes], env: dict[str, str], status: int, says: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"backend", *args],
        env=_env(PGCAST_URL=closed, LOG_LEVEL="ERROR", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == status, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("pgcast: "), line
    assert says in line, line


def test_serve_refuses_a_port_out_of_range() -> None:
    result = _run("serve", "--port", "99999")
    assert result.returncode == 2
    assert "--port" in result.stderr


@pytest.mark.external
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_status_1(database_url: str, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("serve", "--port", str(port), "--workers", workers, DATABASE_URL=database_url)
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"pgcast: cannot listen on 127.0.0.1:{port}: "), last
    assert "in use" in last, last
    assert "Traceback" not in result.stderr


@pytest.mark.external
def test_migrate_takes_the_url_options_asyncpg_reads(database_url: str) -> None:
    result = _run("migrate", DATABASE_URL=f"{database_url}?sslmode=disable")
    assert result.returncode == 0, result.stderr


@pytest.mark.external
def test_serve_runs_itself_again_under_jemalloc_where_the_machine_has_it(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in for_other_programs(os.environ).items() if k != "ALLOCATOR"}
    env.update(DATABASE_URL=database_url, PORT=str(port), HOST="127.0.0.1")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve"], env=env, stdout=out, stderr=out
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        maps = Path(f"/proc/{process.pid}/maps").read_text()  # the same process, re-executed
        expected = "jemalloc" if jemalloc_library() else "pymalloc"
        assert ("libjemalloc" in maps) == (expected == "jemalloc")
        assert f"memory allocator: {expected}" in log.read_text()
    finally:
        stop_process(process)
