"""The live view page and pgcast.js, end to end in headless Chromium (Debian's package).

Playwright drives `/usr/bin/chromium`; nothing downloads a browser. Without it these tests
skip, naming the install command, except under `CI=true`, where they fail.

Playwright's sync API marks this thread's asyncio loop as running while it is open, so
`anyio.run` cannot be called here meanwhile: the module's browser starts after
`shared_server` (whose fixture calls it) and stops before it, and the database of the
restart test is made and dropped in a worker thread.

`PGCAST_UPDATE_SCREENSHOT=1` also writes the screenshot to `docs/screenshot.png`.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio
import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from backend.entities.event import MAX_POSITION, format_id
from backend.testing import postgres
from backend.testing.programs import require_program
from backend.testing.server import ServerProcess, spawn, start_server

pytestmark = pytest.mark.external

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install chromium chromium-driver"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "screenshot.png"
UPDATE_SCREENSHOT = "PGCAST_UPDATE_SCREENSHOT"

T = TypeVar("T")


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_program(CHROMIUM, INSTALL)


@pytest.fixture(scope="module")
def browser(chromium: str, shared_server: ServerProcess) -> Iterator[Browser]:
    """One headless browser for the module (after `shared_server`: see the docstring)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh browser context; uncaught script errors fail the test."""
    errors: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 820}, reduced_motion="reduce")
    try:
        page = context.new_page()
        page.set_default_timeout(5000)
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
    finally:
        context.close()
    assert not errors, f"script errors on the page: {errors}"


def in_thread(func: Callable[..., Awaitable[T]], *args: object) -> T:
    """`anyio.run` in a worker thread, whose event loop Playwright leaves alone."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, func, *args).result()


@pytest.fixture
def restart_database() -> Iterator[str]:
    """A fresh database for a server that the test stops and starts again."""
    url = in_thread(postgres.clone_template)
    try:
        yield url
    finally:
        in_thread(postgres.drop, url)


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


def publish(server: ServerProcess, topic: str, data: Any, **fields: str) -> str:
    response = httpx.post(
        f"{server.url}/topics/{topic}/events", json={"data": data, **fields}, timeout=5
    )
    assert response.status_code == 201, response.text
    return str(response.json()["events"][0]["id"])


def open_view(page: Page, server: ServerProcess, **query: str) -> None:
    page.goto(f"{server.url}/?{urlencode(query)}")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")


def listed_ids(page: Page) -> list[str]:
    ids: list[str] = page.locator("#events > li").evaluate_all(
        "rows => rows.map(row => row.dataset.id)"
    )
    return ids


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_js_subscription(page: Page, name: str, topic: str, **options: Any) -> None:
    """Subscribe with pgcast.js in the page; events land in `window[name]`."""
    page.evaluate(
        """async ([name, topic, options]) => {
            const pgcast = await import("/static/pgcast.js");
            const record = window[name] = { events: [], resets: [], statuses: [] };
            await new Promise((resolve, reject) => {
                record.subscription = pgcast.subscribe("", topic, {
                    ...options,
                    onEvent: (event) => record.events.push(event),
                    onReset: (reset) => record.resets.push(reset),
                    onError: (error) => record.error = `${error.code}: ${error.message}`,
                    onStatus: (status) => {
                        record.statuses.push(status);
                        if (status === "live") resolve();
                        if (status === "closed") reject(new Error(record.error));
                    },
                });
            });
        }""",
        [name, topic, options],
    )


def js_event_ids(page: Page, name: str) -> list[str]:
    ids: list[str] = page.evaluate("name => window[name].events.map(e => e.id)", name)
    return ids


def test_a_missing_browser_skips_locally_and_fails_in_ci(tmp_path: Path) -> None:
    missing = tmp_path / "chromium"
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium chromium-driver"):
        require_program(missing, INSTALL, ci=False)
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium chromium-driver"):
        require_program(missing, INSTALL, ci=True)


def test_published_event_appears_live(page: Page, shared_server: ServerProcess) -> None:
    topic = unique("browser.live")
    open_view(page, shared_server, topic=topic)
    expect(page.get_by_label("Topic or pattern")).to_have_value(topic)

    started = time.monotonic()
    first = publish(shared_server, topic, {"n": 1})
    row = page.locator(f'#events > li[data-id="{first}"]')
    expect(row).to_be_visible(timeout=2000)
    assert time.monotonic() - started < 2

    # Rows open with the keyboard and show the envelope as pretty JSON.
    row.locator("summary").focus()
    page.keyboard.press("Enter")
    expect(row.locator("pre")).to_contain_text('"n": 1')
    expect(row.locator("pre")).to_contain_text(f'"topic": "{topic}"')

    # The publish form posts with fetch; a typed event shows because the page listens
    # for the types it publishes.
    page.get_by_label("Data (JSON)").fill('{"n": 2}')
    page.locator("#pub-type").fill("greeting")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#publish-result")).to_contain_text("Published")
    expect(page.locator("#events > li")).to_have_count(2)
    newest = page.locator("#events > li").first
    expect(newest.locator(".type")).to_have_text("greeting")
    assert listed_ids(page)[1] == first

    page.get_by_label("Data (JSON)").fill("{not json")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#publish-result")).to_contain_text("not valid JSON")
    expect(page.get_by_label("Data (JSON)")).to_have_attribute("aria-invalid", "true")


def test_reset_and_bad_input_are_shown(page: Page, shared_server: ServerProcess) -> None:
    topic = unique("browser.reset")
    ahead = format_id(MAX_POSITION)
    page.goto(f"{shared_server.url}/?{urlencode({'topic': topic, 'after': ahead})}")
    expect(page.locator("#notices .notice")).to_contain_text("Stream reset (unknown)")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    event_id = publish(shared_server, topic, {"after": "reset"})
    expect(page.locator(f'#events > li[data-id="{event_id}"]')).to_be_visible()

    page.get_by_label("Topic or pattern").fill("bad..topic")
    page.get_by_label("Topic or pattern").press("Enter")
    expect(page.locator("#subscribe-error")).to_contain_text("invalid_topic")
    expect(page.locator("#status")).to_have_attribute("data-state", "error")


def test_page_resumes_across_a_server_restart(page: Page, restart_database: str) -> None:
    with start_server(restart_database) as server:
        resume_across_restart(page, server)


def resume_across_restart(page: Page, server: ServerProcess) -> None:
    topic = unique("browser.restart")
    open_view(page, server, topic=topic)
    start_js_subscription(page, "viaWs", topic, transport="ws")
    status = page.locator("#status")

    before = [publish(server, topic, {"n": n}) for n in range(3)]
    expect(page.locator("#events > li")).to_have_count(3)

    server.stop()
    expect(status).to_have_attribute("data-state", "reconnecting")
    restarted = spawn(server.database_url, port=server.port)
    try:
        # Published while the page is still waiting to reconnect, then once it is live.
        during = [publish(restarted, topic, {"n": n}) for n in range(3, 6)]
        expect(status).to_have_attribute("data-state", "live", timeout=10000)
        after = [publish(restarted, topic, {"n": n}) for n in range(6, 9)]
        expected = before + during + after

        expect(page.locator("#events > li")).to_have_count(len(expected))
        assert listed_ids(page) == expected[::-1]
        expect(page.locator("#last-id")).to_have_text(expected[-1])
        eventually(lambda: len(js_event_ids(page, "viaWs")) >= len(expected), timeout=20)
        assert js_event_ids(page, "viaWs") == expected
        statuses = page.evaluate("window.viaWs.statuses")
        assert "reconnecting" in statuses
        assert statuses[-1] == "live"
    finally:
        restarted.stop()


def test_js_client_websocket_publish_and_consume(page: Page, shared_server: ServerProcess) -> None:
    page.goto(shared_server.url + "/")
    topic = unique("browser.ws")
    start_js_subscription(page, "sub", f"{topic}.>", transport="ws")

    # publish() from the page: typed events arrive over WebSocket too; an idempotency
    # key makes a retry return the same event.
    published = page.evaluate(
        """async (topic) => {
            const { publish } = await import("/static/pgcast.js");
            const a = await publish("", topic, { n: 1 }, { type: "made", key: "k1" });
            const b = await publish("", topic, { n: 2 }, { idempotencyKey: "once" });
            const c = await publish("", topic, { n: 2 }, { idempotencyKey: "once" });
            let error = null;
            try { await publish("", "bad..topic", 1); } catch (e) { error = e.code; }
            return { ids: [a.id, b.id, c.id], type: a.type, error };
        }""",
        f"{topic}.a",
    )
    assert published["ids"][1] == published["ids"][2]
    assert published["type"] == "made"
    assert published["error"] == "invalid_topic"
    third = publish(shared_server, f"{topic}.b", {"n": 3})
    eventually(lambda: len(js_event_ids(page, "sub")) == 3)
    assert js_event_ids(page, "sub") == [*published["ids"][:2], third]

    # A resume point past the end of the log: the client reports the in-band reset.
    start_js_subscription(page, "ahead", topic + ".a", transport="ws", after="9" * 16)
    eventually(lambda: page.evaluate("window.ahead.resets.length") == 1)
    assert page.evaluate("window.ahead.resets[0].reason") == "unknown"
    page.evaluate("window.sub.subscription.close(); window.ahead.subscription.close()")

    # consume(): ack, extend then ack, nack then redelivery, and a throwing handler that
    # nacks for us (max_attempts 1 sends that one straight to the dead letters).
    queue = "thumbnails"
    made = httpx.post(
        f"{shared_server.url}/queues/{queue}/messages",
        json=[
            {"data": {"job": "ack"}},
            {"data": {"job": "extend"}},
            {"data": {"job": "retry"}},
            {"data": {"job": "boom"}, "max_attempts": 1},
        ],
        timeout=5,
    )
    assert made.status_code == 201, made.text
    page.evaluate(
        """async (queue) => {
            const { consume } = await import("/static/pgcast.js");
            const log = window.consumeLog = [];
            window.consumer = consume("", queue, {
                prefetch: 2,
                lease: 10,
                onError: (error) => log.push(`error:${error.message}`),
                onMessage: async (message, handle) => {
                    const job = message.data.job;
                    log.push(`${job}#${message.attempt}`);
                    if (job === "boom") throw new Error("boom");
                    if (job === "extend") {
                        const { lease_until } = await handle.extend(20);
                        log.push(`extended:${typeof lease_until}`);
                    }
                    if (job === "retry" && message.attempt === 1) {
                        const { state } = await handle.nack({ delay_seconds: 0, error: "again" });
                        log.push(`nacked:${state}`);
                        return;
                    }
                    await handle.ack();
                    log.push(`acked:${job}`);
                },
            });
        }""",
        queue,
    )

    def settled() -> bool:
        stats = httpx.get(f"{shared_server.url}/queues/{queue}", timeout=5).json()
        counts = (stats["ready"], stats["leased"], stats["delayed"], stats["dead"])
        return counts == (0, 0, 0, 1) and "acked:retry" in page.evaluate("window.consumeLog")

    eventually(settled, timeout=20)
    outcome = page.evaluate("window.consumer.close(); window.consumeLog")
    for entry in [
        "ack#1",
        "acked:ack",
        "extend#1",
        "extended:string",
        "acked:extend",
        "retry#1",
        "nacked:ready",
        "retry#2",
        "acked:retry",
        "boom#1",
        "error:boom",
    ]:
        assert entry in outcome, outcome
    dead = httpx.get(f"{shared_server.url}/queues/{queue}/dead", timeout=5).json()
    assert dead["messages"][0]["last_error"] == "boom"


def test_screenshot(page: Page, shared_server: ServerProcess) -> None:
    """A real page with a few events and queues, saved as an artifact (and for the docs)."""
    url = shared_server.url
    open_view(page, shared_server, topic="shop.>", types="order.created,order.paid")
    events = [
        ("shop.orders.eu", "order.created", "A-1001", {"order": "A-1001", "amount": 42.5}),
        ("shop.orders.us", "order.created", "B-2002", {"order": "B-2002", "amount": 19}),
        ("shop.orders.eu", "order.paid", "A-1001", {"order": "A-1001", "method": "card"}),
        ("shop.stock", None, "sku-7", {"sku": "sku-7", "left": 3}),
        ("shop.orders.us", "order.paid", "B-2002", {"order": "B-2002", "method": "invoice"}),
        ("shop.orders.eu", "order.created", "A-1002", {"order": "A-1002", "amount": 7.25}),
    ]
    for topic, kind, key, data in events:
        fields = {"key": key} | ({"type": kind} if kind else {})
        publish(shared_server, topic, data, **fields)
    for queue, count, delay in [("emails", 4, 0), ("invoices", 2, 60), ("webhooks", 3, 0)]:
        body = [{"data": {"n": n}, "delay_seconds": delay} for n in range(count)]
        assert httpx.post(f"{url}/queues/{queue}/messages", json=body, timeout=5).is_success
    claimed = httpx.get(f"{url}/queues/emails/messages", params={"lease": 60}, timeout=5)
    assert claimed.json()["messages"]

    expect(page.locator("#events > li")).to_have_count(len(events))
    expect(page.locator('#queues-body tr[data-queue="emails"] td.leased')).to_have_text("1")
    expect(page.locator('#queues-body tr[data-queue="invoices"] td.delayed')).to_have_text("2")
    page.locator("#events > li summary").first.click()
    page.get_by_label("Topic", exact=True).fill("shop.orders.eu")
    page.get_by_label("Data (JSON)").fill('{"order": "A-1003", "amount": 12}')
    page.locator("#pub-type").fill("order.created")
    page.get_by_label("Topic or pattern").focus()

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "live-view.png"
    page.screenshot(path=shot, full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get(UPDATE_SCREENSHOT) == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
