"""Capture administration over HTTP (against the app in-process) and the `pgcast capture`
CLI (against a real server)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from backend.connectors.database import connect
from backend.connectors.embedded import free_port
from backend.core.settings import Settings
from backend.testing.in_process import app_client
from backend.testing.server import ServerProcess

TABLES = (
    "CREATE TABLE public.orders (id int PRIMARY KEY, status text, total numeric)",
    "CREATE VIEW public.order_view AS SELECT * FROM orders",
    "CREATE TABLE public.keyless (a int)",
)


async def _create_tables(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        for statement in TABLES:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _execute(database_url: str, statement: str) -> None:
    conn = await connect(database_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process on this test's database, with the tables to capture."""
    await _create_tables(database_url)
    async with app_client(Settings(), database_url) as app:
        yield app


@pytest.mark.integrated
@pytest.mark.anyio
async def test_admin_endpoints_add_list_update_and_remove(
    client: httpx.AsyncClient, database_url: str
) -> None:
    assert (await client.get("/admin/captures")).json() == {"captures": []}

    added = await client.put("/admin/captures/public.orders")
    assert added.status_code == 200, added.text
    assert added.json() == {
        "table": "public.orders",
        "topic": "db.public.orders",
        "columns": None,
    }

    updated = await client.put(
        "/admin/captures/orders", json={"topic": "shop.orders", "columns": ["id", "status"]}
    )
    assert updated.status_code == 200, updated.text
    expected = {"table": "public.orders", "topic": "shop.orders", "columns": ["id", "status"]}
    assert updated.json() == expected
    assert (await client.put("/admin/captures/public.orders", json={})).json()["columns"] is None
    await client.put("/admin/captures/public.orders", json={"topic": "shop.orders"})
    listed = (await client.get("/admin/captures")).json()
    assert listed == {
        "captures": [{"table": "public.orders", "topic": "shop.orders", "columns": None}]
    }

    await _execute(database_url, "INSERT INTO orders VALUES (1, 'new', 9.5)")
    page = await client.get("/topics/shop.orders/events", params={"after": "earliest", "wait": 5})
    (event,) = page.json()["events"]
    assert (event["type"], event["key"]) == ("insert", "1")
    assert event["data"] == {"new": {"id": 1, "status": "new", "total": 9.5}, "old": None}

    assert (await client.delete("/admin/captures/public.orders")).json() == {"removed": True}
    assert (await client.delete("/admin/captures/public.orders")).json() == {"removed": False}
    assert (await client.get("/admin/captures")).json() == {"captures": []}


BAD_REQUESTS: list[tuple[str, object, str, str]] = [
    ("public.missing", None, "invalid_capture_target", "table public.missing does not exist"),
    ("public.order_view", None, "invalid_capture_target", "public.order_view is a view"),
    ("public.keyless", None, "invalid_capture_target", "table public.keyless has no primary key"),
    ("a.b.c", None, "invalid_capture_target", "invalid table 'a.b.c'"),
    (
        "public.orders",
        {"columns": ["id", "nope"]},
        "invalid_capture_target",
        "table public.orders has no column(s) 'nope'",
    ),
    ("public.orders", {"topic": "a b"}, "invalid_capture_target", "invalid topic 'a b'"),
    ("public.orders", {"topic": 5}, "invalid_capture_target", "topic must be a string"),
    ("public.orders", [1], "invalid_body", "the body must be a JSON object"),
    ("public.orders", {"colums": ["id"]}, "invalid_body", "unknown field(s): colums"),
    ("public.orders", b"{", "invalid_json", "the body is not valid JSON"),
]


@pytest.mark.integrated
@pytest.mark.anyio
async def test_bad_targets_are_400_with_a_json_error(client: httpx.AsyncClient) -> None:
    for path, body, error, message in BAD_REQUESTS:
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            response = await client.put(f"/admin/captures/{path}", content=body, headers=headers)
        else:
            response = await client.put(f"/admin/captures/{path}", json=body)
        assert response.status_code == 400, (path, body, response.text)
        payload = response.json()
        assert set(payload) == {"error", "message"}
        assert payload["error"] == error, (path, body, payload)
        assert message in payload["message"], (path, body, payload)
    assert (await client.get("/admin/captures")).json() == {"captures": []}


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGCAST_URL": url}
    env.pop("PGCAST_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "backend", "capture", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.external
@pytest.mark.anyio
async def test_cli_add_list_remove_and_errors(server: ServerProcess) -> None:
    await _create_tables(server.database_url)

    added = _cli(
        "add", "public.orders", "--topic", "shop.orders", "--columns", "id, total", url=server.url
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == "capturing public.orders -> shop.orders (columns id,total)\n"

    listed = _cli("list", url=server.url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "public.orders -> shop.orders (columns id,total)\n"

    again = _cli("add", "orders", url=server.url)
    assert again.stdout == "capturing public.orders -> db.public.orders (all columns)\n"

    removed = _cli("remove", "public.orders", url=server.url)
    assert (removed.returncode, removed.stdout) == (0, "stopped capturing public.orders\n")
    removed = _cli("remove", "public.orders", url=server.url)
    assert (removed.returncode, removed.stdout) == (0, "public.orders was not captured\n")
    assert _cli("list", url=server.url).stdout == ""

    bad = _cli("add", "public.order_view", url=server.url)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr == (
        "pgcast: public.order_view is a view: only ordinary and partitioned tables can be"
        " captured\n"
    )
    missing = _cli("add", "public.nope", "--columns", "id", url=server.url)
    assert (missing.returncode, missing.stderr) == (
        1,
        "pgcast: table public.nope does not exist\n",
    )

    usage = _cli("add", url=server.url)
    assert usage.returncode == 2
    assert "SCHEMA.TABLE" in usage.stderr
    assert _cli("add", "public.orders", "--bogus", url=server.url).returncode == 2

    with_token = _cli("list", "--token", "secret", url=server.url)
    assert with_token.returncode == 0, with_token.stderr


@pytest.mark.external
def test_cli_without_a_server_says_where_it_tried() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["list"], ["add", "public.orders"], ["remove", "public.orders"]):
        result = _cli(*args, url=url)
        assert result.returncode == 1
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line == f"pgcast: cannot connect to {url}: connection refused"


@pytest.mark.external
def test_cli_help_has_examples() -> None:
    for command in ("add", "list", "remove"):
        result = _cli(command, "--help", url="http://127.0.0.1:1")
        assert result.returncode == 0
        assert "Example: " in result.stdout
        assert "pgcast capture " in result.stdout


@pytest.mark.external
def test_a_bad_capture_tables_entry_stops_start_up(database_url: str) -> None:
    anyio.run(_execute, database_url, "CREATE TABLE public.orders (id int PRIMARY KEY)")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(free_port()),
        "CAPTURE_TABLES": "public.orders,public.nope",
    }
    result = subprocess.run(
        [sys.executable, "-m", "backend", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CAPTURE_TABLES: table public.nope does not exist" in result.stdout + result.stderr
