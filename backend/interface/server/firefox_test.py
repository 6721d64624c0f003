"""The live view page and pgcast.js in headless Firefox (Debian's `firefox-esr`).

Firefox is driven over WebDriver BiDi (backend/testing/firefox.py). The checks mirror the
Chromium ones where browsers differ most: EventSource reconnects and Last-Event-ID after a
server restart, WebSocket frames, fetch-based publish and the consume loop. Without
Firefox these tests skip, naming the install command, except under `CI=true`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from backend.testing.firefox import Firefox, Tab, launch
from backend.testing.programs import require_program
from backend.testing.server import ServerProcess, spawn, start_server

pytestmark = pytest.mark.external

FIREFOX = Path("/usr/bin/firefox-esr")
INSTALL = "apt-get install firefox-esr"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

ROWS = "() => [...document.querySelectorAll('#events > li')].map((row) => row.dataset.id)"
STATE = "() => document.querySelector('#status').dataset.state"


@pytest.fixture(scope="module")
def firefox() -> Iterator[Firefox]:
    with launch(require_program(FIREFOX, INSTALL)) as browser:
        yield browser


@pytest.fixture
def tab(firefox: Firefox) -> Iterator[Tab]:
    """A fresh tab; uncaught script errors on its pages fail the test."""
    with firefox.tab() as tab:
        yield tab
        errors = list(tab.errors)
    assert not errors, f"script errors on the page: {errors}"


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


def publish(server: ServerProcess, topic: str, data: Any) -> str:
    response = httpx.post(f"{server.url}/topics/{topic}/events", json={"data": data}, timeout=5)
    assert response.status_code == 201, response.text
    return str(response.json()["events"][0]["id"])


def open_view(tab: Tab, server: ServerProcess, **query: str) -> None:
    tab.goto(f"{server.url}/?{urlencode(query)}")
    tab.wait_for(f"() => ({STATE})() === 'live'")


def rows(tab: Tab) -> list[str]:
    ids: list[str] = tab.run(ROWS)
    return ids


def wait_rows(tab: Tab, count: int, timeout: float = 10.0) -> list[str]:
    tab.wait_for(f"(count) => ({ROWS})().length >= count", count, timeout=timeout)
    return rows(tab)


def test_live_view_over_sse_and_websocket(tab: Tab, shared_server: ServerProcess) -> None:
    topic = unique("firefox.live")
    open_view(tab, shared_server, topic=topic)

    started = time.monotonic()
    first = publish(shared_server, topic, {"n": 1})
    assert wait_rows(tab, 1, timeout=2) == [first]
    assert time.monotonic() - started < 2

    # The publish form posts with fetch and reports the new id.
    result = tab.run(
        """async () => {
            document.querySelector('#pub-data').value = '{"n": 2}';
            document.querySelector('#publish').click();
            const result = document.querySelector('#publish-result');
            while (!result.textContent.includes('Published')) {
                await new Promise((resolve) => setTimeout(resolve, 20));
            }
            return result.textContent;
        }"""
    )
    assert "Published" in result
    second = wait_rows(tab, 2)[0]
    assert second > first

    # Switching the page to WebSocket carries on after the last row: nothing shows twice.
    tab.run(
        """async () => {
            document.querySelector('#sub-transport').value = 'ws';
            document.querySelector('#subscribe').click();
        }"""
    )
    tab.wait_for(f"() => ({STATE})() === 'live'")
    third = publish(shared_server, topic, {"n": 3})
    assert wait_rows(tab, 3) == [third, second, first]
    assert tab.run("() => new URLSearchParams(location.search).get('transport')") == "ws"


def test_js_client_subscribes_publishes_and_consumes(
    tab: Tab, shared_server: ServerProcess
) -> None:
    tab.goto(shared_server.url + "/")
    topic = unique("firefox.js")
    tab.run(
        """async (topic) => {
            const pgcast = await import('/static/pgcast.js');
            window.got = { sse: [], ws: [] };
            const live = (transport) => new Promise((resolve, reject) => {
                pgcast.subscribe('', `${topic}.>`, {
                    transport,
                    types: ['made'],
                    onEvent: (event) => window.got[transport].push(event.id),
                    onStatus: (status) => {
                        if (status === 'live') resolve();
                        if (status === 'closed') reject(new Error(`${transport} closed`));
                    },
                });
            });
            await Promise.all([live('sse'), live('ws')]);
        }""",
        topic,
    )
    published = tab.run(
        """async (topic) => {
            const { publish } = await import('/static/pgcast.js');
            const a = await publish('', `${topic}.a`, { n: 1 }, { type: 'made' });
            const b = await publish('', `${topic}.b`, { n: 2 }, { idempotencyKey: 'k' });
            const c = await publish('', `${topic}.b`, { n: 2 }, { idempotencyKey: 'k' });
            let error = null;
            try { await publish('', 'bad..topic', 1); } catch (e) { error = e.code; }
            return { ids: [a.id, b.id, c.id], error };
        }""",
        topic,
    )
    assert published["ids"][1] == published["ids"][2]
    assert published["error"] == "invalid_topic"
    expected = published["ids"][:2]
    got = tab.wait_for(
        "(n) => window.got.sse.length >= n && window.got.ws.length >= n && window.got", 2
    )
    assert got == {"sse": expected, "ws": expected}

    queue = unique("firefox").replace(".", "-")
    made = httpx.post(
        f"{shared_server.url}/queues/{queue}/messages",
        json=[{"data": {"job": "ack"}}, {"data": {"job": "retry"}}],
        timeout=5,
    )
    assert made.status_code == 201, made.text
    log = tab.run(
        """async (queue) => {
            const { consume } = await import('/static/pgcast.js');
            const log = [];
            await new Promise((resolve) => {
                const consumer = consume('', queue, {
                    onMessage: async (message, handle) => {
                        log.push(`${message.data.job}#${message.attempt}`);
                        if (message.data.job === 'retry' && message.attempt === 1) {
                            await handle.nack({ delay: 0, error: 'again' });
                            return;
                        }
                        await handle.ack();
                        if (log.length === 3) { consumer.close(); resolve(); }
                    },
                });
            });
            return log;
        }""",
        queue,
    )
    assert sorted(log) == ["ack#1", "retry#1", "retry#2"]
    stats = httpx.get(f"{shared_server.url}/queues/{queue}", timeout=5).json()
    assert (stats["ready"], stats["leased"], stats["dead"]) == (0, 0, 0)


def test_page_resumes_across_a_server_restart(tab: Tab, database_url: str) -> None:
    """Firefox's EventSource reconnects with Last-Event-ID: every event shows exactly once."""
    with start_server(database_url) as server:
        topic = unique("firefox.restart")
        open_view(tab, server, topic=topic)
        before = [publish(server, topic, {"n": n}) for n in range(3)]
        wait_rows(tab, 3)

        server.stop()
        tab.wait_for(f"() => ({STATE})() === 'reconnecting'")
        restarted = spawn(server.database_url, port=server.port)
        try:
            during = [publish(restarted, topic, {"n": n}) for n in range(3, 6)]
            tab.wait_for(f"() => ({STATE})() === 'live'", timeout=20)
            after = [publish(restarted, topic, {"n": n}) for n in range(6, 9)]
            expected = before + during + after
            assert wait_rows(tab, len(expected), timeout=20) == expected[::-1]
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "live-view-firefox.png"
            tab.screenshot(shot)
            assert shot.stat().st_size > 10_000
        finally:
            restarted.stop()
