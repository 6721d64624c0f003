"""The HTTP and SSE contract against a real server process (docs/protocol.md)."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import anyio
import httpx
import orjson
import psutil
import pytest

from backend.connectors.database import LISTENER_APPLICATION_NAME, connect
from backend.connectors.embedded import EmbeddedPostgres
from backend.connectors.migrations import upgrade
from backend.testing.clients import next_events, publish, sse
from backend.testing.server import ServerProcess, start_server

pytestmark = [pytest.mark.external, pytest.mark.anyio]

SSE = {"Accept": "text/event-stream"}


async def test_publish_returns_committed_envelopes(shared_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=shared_server.url) as client:
        one = await client.post(
            "/topics/orders.created/events", json={"data": {"n": 1}, "type": "created", "key": "o1"}
        )
        many = await client.post("/topics/orders.created/events", json=[{"data": 2}, {"data": 3}])
    assert one.status_code == 201
    (envelope,) = one.json()["events"]
    assert set(envelope) == {"id", "topic", "type", "key", "data", "time"}
    assert (envelope["topic"], envelope["type"], envelope["key"], envelope["data"]) == (
        "orders.created",
        "created",
        "o1",
        {"n": 1},
    )
    assert envelope["time"].endswith("Z")
    ids = [e["id"] for e in many.json()["events"]]
    assert [e["data"] for e in many.json()["events"]] == [2, 3]
    assert envelope["id"] < ids[0] < ids[1]


async def test_json_pages_and_long_poll(shared_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=shared_server.url) as client:
        published = await publish(client, shared_server.url, "p", *range(5))
        first = (
            await client.get("/topics/p/events", params={"after": "earliest", "limit": 3})
        ).json()
        second = (await client.get("/topics/p/events", params={"after": first["next"]})).json()
        assert [e["data"] for e in first["events"]] == [0, 1, 2]
        assert first["next"] == published[2]["id"]
        assert [e["data"] for e in second["events"]] == [3, 4]

        async def later() -> None:
            await anyio.sleep(0.3)
            await publish(client, shared_server.url, "p", "late")

        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            started = time.monotonic()
            waited = (
                await client.get("/topics/p/events", params={"after": second["next"], "wait": 5})
            ).json()
        assert [e["data"] for e in waited["events"]] == ["late"]
        assert 0.2 < time.monotonic() - started < 4
        empty = (
            await client.get("/events", params={"topic": "p", "after": waited["next"], "wait": 0.2})
        ).json()
        assert empty == {"events": [], "next": waited["next"]}


async def test_sse_resumes_from_last_event_id_without_gap_or_duplicate(
    shared_server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=shared_server.url, timeout=10) as client:
        published = await publish(client, shared_server.url, "r.a", *range(5))
        url = "/events?topic=r.*"
        async with sse(client, url, {**SSE, "Last-Event-ID": published[1]["id"]}) as stream:
            with anyio.fail_after(5):
                backlog = await next_events(stream, 3)
                live = await publish(client, shared_server.url, "r.b", "live")
                (fresh,) = await next_events(stream, 1)
    assert [m.id for m in backlog] == [e["id"] for e in published[2:]]
    assert [m.event for m in backlog] == ["message"] * 3
    assert [orjson.loads(m.data)["data"] for m in backlog] == [2, 3, 4]
    assert fresh.id == live[0]["id"]
    assert orjson.loads(fresh.data) == live[0]


async def test_sse_uses_type_as_event_name_and_applies_filters(
    shared_server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=shared_server.url, timeout=10) as client:
        url = "/topics/f/events?filter=data.amount%3Dgt.100&after=latest"
        async with sse(client, url, SSE) as stream:
            await client.post(
                "/topics/f/events",
                json=[{"data": {"amount": 5}}, {"data": {"amount": 500}, "type": "big"}],
            )
            with anyio.fail_after(5):
                (message,) = await next_events(stream, 1)
    assert message.event == "big"
    assert orjson.loads(message.data)["data"] == {"amount": 500}


async def test_idempotency_key_replays_and_conflicts(shared_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=shared_server.url) as client:
        headers = {"Idempotency-Key": "order-7"}
        first = await client.post(
            "/topics/i/events", json=[{"data": 1}, {"data": 2}], headers=headers
        )
        again = await client.post(
            "/topics/i/events", json=[{"data": 1}, {"data": 2}], headers=headers
        )
        other = await client.post("/topics/i/events", json={"data": 3}, headers=headers)
        page = (await client.get("/topics/i/events", params={"after": "earliest"})).json()
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 409
    assert other.json()["error"] == "conflict"
    assert [e["data"] for e in page["events"]] == [1, 2]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("post", "/topics/bad..topic/events", {"json": {"data": 1}}, 400, "invalid_topic"),
        (
            "post",
            "/topics/t/events",
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "invalid_json",
        ),
        ("post", "/topics/t/events", {"json": {"type": "x"}}, 400, "invalid_event"),
        ("post", "/topics/t/events", {"json": {"data": 1, "extra": 2}}, 400, "invalid_event"),
        ("post", "/topics/t/events", {"json": []}, 400, "invalid_event"),
        (
            "post",
            "/topics/t/events",
            {"json": [{"data": i} for i in range(1001)]},
            413,
            "too_many_events",
        ),
        ("post", "/topics/t/events", {"json": {"data": "x" * 5000}}, 413, "event_too_large"),
        ("post", "/topics/t/events", {"json": {"data": "x" * 70000}}, 413, "body_too_large"),
        (
            "post",
            "/topics/t/events",
            {"content": b"data=1", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            "post",
            "/topics/t/events",
            {"json": {"data": 1}, "headers": {"Idempotency-Key": ""}},
            400,
            "invalid_event",
        ),
        ("get", "/topics/t/events?filter=data.x%3Dfoo.1", {}, 400, "invalid_filter"),
        ("get", "/topics/t/events?after=yesterday", {}, 400, "invalid_cursor"),
        ("get", "/topics/t/events?limit=0", {}, 400, "invalid_parameter"),
        ("get", "/topics/t/events?wait=31", {}, 400, "invalid_parameter"),
        ("get", "/events", {}, 400, "invalid_topic"),
        ("get", "/nowhere", {}, 404, "not_found"),
        ("delete", "/topics/t/events", {}, 405, "method_not_allowed"),
    ],
)
def test_bad_requests_get_json_errors(
    limited_server: ServerProcess,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
    code: str,
) -> None:
    response = httpx.request(method, limited_server.url + path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert body["message"]


@pytest.fixture(scope="module")
def limited_server() -> object:
    """One server with small limits for the error table (module-scoped: it never changes)."""
    from backend.testing import postgres

    url = anyio.run(postgres.clone_template)
    with start_server(
        url, extra_env={"MAX_EVENT_BYTES": "4096", "MAX_BODY_BYTES": "65536"}
    ) as server:
        yield server
    anyio.run(postgres.drop, url)


async def test_pruned_resume_point_yields_an_in_band_reset(database_url: str) -> None:
    with start_server(database_url, extra_env={"RETENTION_INTERVAL_SECONDS": "0.2"}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            old = await publish(client, server.url, "z", 1, 2, 3)
            conn = await connect(database_url)
            try:
                await conn.execute(
                    "UPDATE pgcast.events SET created_at = now() - interval '30 days'"
                )
                with anyio.fail_after(5):
                    while await conn.fetchval("SELECT pruned_through FROM pgcast.log_state") < 3:
                        await anyio.sleep(0.05)
            finally:
                await conn.close()
            kept = await publish(client, server.url, "z", 4)
            async with sse(
                client, "/topics/z/events", {**SSE, "Last-Event-ID": old[0]["id"]}
            ) as stream:
                with anyio.fail_after(5):
                    reset, event = await next_events(stream, 2)
    assert reset.event == "pgcast.reset"
    assert reset.id == ""
    payload = orjson.loads(reset.data)
    assert payload["reason"] == "pruned"
    assert payload["oldest"] == f"{int(old[2]['id']) + 1:016d}"
    assert event.id == kept[0]["id"]


async def test_idle_client_that_leaves_is_freed_within_a_heartbeat(database_url: str) -> None:
    with start_server(database_url, extra_env={"HEARTBEAT_SECONDS": "1"}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with sse(client, "/topics/idle/events", SSE):
                assert await _sse_connections(client) == 1
            with anyio.fail_after(3):
                while await _sse_connections(client) != 0:
                    await anyio.sleep(0.1)


async def _sse_connections(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith('pgcast_connections{transport="sse"}'):
            return float(line.split()[-1])
    return 0.0


async def test_stalled_client_is_bounded_and_does_not_slow_others(database_url: str) -> None:
    # 50 KB events are mapped and unmapped one by one rather than left in glibc's heap, and
    # jemalloc returns freed pages at once, so the server's RSS follows what it holds: about
    # 19 MiB here with or without the stalled client, where its heap's high-water mark
    # varied from 45 to 65 MiB.
    env = {
        "SEND_TIMEOUT": "2",
        "HEARTBEAT_SECONDS": "1",
        "SUBSCRIBER_BUFFER": "50",
        "MALLOC_MMAP_THRESHOLD_": "32768",
        "MALLOC_CONF": "background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0",
    }
    with start_server(database_url, extra_env=env) as server:
        process = psutil.Process(server.process.pid)
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(
            b"GET /topics/big/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        try:
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=20) as client,
                sse(client, "/topics/big/events", SSE) as healthy,
            ):
                await anyio.sleep(0.3)
                baseline = process.memory_info().rss
                blob = "x" * 50_000
                sent: list[str] = []
                for _ in range(10):
                    sent += [
                        e["id"] for e in await publish(client, server.url, "big", *[blob] * 20)
                    ]
                with anyio.fail_after(15):
                    got = await next_events(healthy, len(sent))
                assert [m.id for m in got] == sent
                grown = process.memory_info().rss - baseline
                assert grown < 28 * 1024 * 1024, f"server grew by {grown} bytes"
                with anyio.fail_after(10):
                    while await _sse_connections(client) > 1:
                        await anyio.sleep(0.2)
        finally:
            stalled.close()


async def test_sigterm_ends_streams_with_a_final_comment_and_exits_promptly(
    database_url: str,
) -> None:
    with start_server(database_url) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            async with client.stream("GET", "/topics/bye/events", headers=SSE) as response:
                lines = response.aiter_lines()
                assert (await anext(lines)).startswith("retry:")
                started = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                rest = [line async for line in lines]
            assert any("shutting down" in line for line in rest)
        assert server.process.wait(10) == 0
        assert time.monotonic() - started < 5


async def test_two_processes_deliver_the_same_order(database_url: str) -> None:
    with start_server(database_url) as a, start_server(database_url) as b:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            sse(client, f"{a.url}/topics/two/events", SSE) as on_a,
            sse(client, f"{b.url}/topics/two/events", SSE) as on_b,
        ):
            ids: list[str] = []
            for i in range(10):
                target = a if i % 2 == 0 else b
                ids += [e["id"] for e in await publish(client, target.url, "two", i)]
            with anyio.fail_after(10):
                got_a = await next_events(on_a, 10)
                got_b = await next_events(on_b, 10)
    assert [m.id for m in got_a] == [m.id for m in got_b] == sorted(ids)


async def test_sql_publishes_reach_subscribers_through_the_sequencers_hand_over(
    database_url: str,
) -> None:
    """What /metrics says of the sequencer: its runs, its spacing, and the events it handed
    to the hub."""
    with start_server(database_url) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            sse(client, f"{server.url}/topics/sql.metrics/events", SSE) as stream,
        ):
            before = _metrics((await client.get("/metrics")).text)
            conn = await connect(database_url)
            try:
                for n in range(3):
                    await conn.execute("SELECT pgcast.publish('sql.metrics', to_jsonb($1::int))", n)
            finally:
                await conn.close()
            with anyio.fail_after(10):
                got = await next_events(stream, 3)
                # A run counts itself once it has given its connection back, which can be
                # after its events reached the stream.
                while (after := _metrics((await client.get("/metrics")).text))[
                    "pgcast_sequencer_runs_total"
                ] == before["pgcast_sequencer_runs_total"]:
                    await anyio.sleep(0.01)
    assert [orjson.loads(m.data)["data"] for m in got] == [0, 1, 2]
    assert after["pgcast_sequencer_runs_total"] > before["pgcast_sequencer_runs_total"]
    handed = after["pgcast_hub_handed_events_total"] - before["pgcast_hub_handed_events_total"]
    assert handed == 3
    assert after["pgcast_sequencer_spacing_seconds"] == 0.002


def _metrics(text: str) -> dict[str, float]:
    """Unlabelled samples of a /metrics page."""
    samples = (line.split() for line in text.splitlines() if not line.startswith("#"))
    return {fields[0]: float(fields[1]) for fields in samples if len(fields) == 2}


async def test_readyz_fails_while_the_listen_connection_is_down(database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    with start_server(database_url, extra_env={"PROBE_INTERVAL_SECONDS": "0.5"}) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/readyz")).status_code == 200
            metrics = (await client.get("/metrics")).text
            for name_ in (
                "pgcast_connections",
                "pgcast_events_published_total",
                "pgcast_delivery_lag_seconds",
                "pgcast_subscriptions",
                "pgcast_lagging_subscribers",
                "pgcast_listener_reconnects_total",
                "pgcast_group_commit_batch_events",
                "pgcast_sequencer_runs_total",
                "pgcast_sequencer_spacing_seconds 0.002",
            ):
                assert name_ in metrics
            admin = await connect(database_url.rsplit("/", 1)[0] + "/postgres")
            try:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND application_name = $2",
                    name,
                    LISTENER_APPLICATION_NAME,
                )
                with anyio.fail_after(5):
                    while (await client.get("/readyz")).status_code != 503:
                        await anyio.sleep(0.1)
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                with anyio.fail_after(10):
                    while (await client.get("/readyz")).status_code != 200:
                        await anyio.sleep(0.1)
            finally:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await admin.close()


async def test_database_outage_gets_503_never_a_false_201(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = pg.start()
    try:
        await anyio.to_thread.run_sync(upgrade, url)
        with start_server(url) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                before = await publish(client, server.url, "out", "before")
                pg.stop("immediate")
                down = await client.post("/topics/out/events", json={"data": "during"})
                assert down.status_code == 503
                assert down.headers["retry-after"] == "1"
                assert down.json()["error"] == "database_unavailable"
                # A stream fixes its start before answering, so it is refused the same way.
                refused = await client.get(
                    "/topics/out/events", params={"after": "earliest"}, headers=SSE
                )
                assert refused.status_code == 503
                assert refused.json()["error"] == "database_unavailable"
                pg.start()
                with anyio.fail_after(20):
                    while (
                        await client.post("/topics/out/events", json={"data": "after"})
                    ).status_code != 201:
                        await anyio.sleep(0.2)
                page = (
                    await client.get("/topics/out/events", params={"after": before[0]["id"]})
                ).json()
        assert "during" not in [e["data"] for e in page["events"]], page
        assert page["events"][0]["data"] == "after", page
    finally:
        pg.destroy()
