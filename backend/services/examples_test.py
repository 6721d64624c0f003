"""The Python examples under examples/python run as written against a real database."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from backend import services

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"

pytestmark = [pytest.mark.integrated, pytest.mark.anyio]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def run(name: str, database_url: str) -> Any:
    return await load(name).main(database_url)


def test_every_example_has_a_test() -> None:
    tested = {"merge_subscriptions", "batch_bulk_writes", "throttle_for_a_ui"}
    tested |= {"heartbeat_when_idle", "subscription_into_a_queue"}
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


async def test_merge_interleaves_two_subscriptions(database_url: str) -> None:
    assert sorted(await run("merge_subscriptions", database_url)) == [
        "orders.created",
        "payments.received",
    ]


async def test_batch_writes_every_matching_row_in_few_inserts(database_url: str) -> None:
    sizes = await run("batch_bulk_writes", database_url)
    assert sum(sizes) == 150  # orders 101..250 have a total above 300
    assert all(size <= 100 for size in sizes)
    assert len(sizes) <= 10


async def test_throttle_shows_fewer_values_and_always_the_last(database_url: str) -> None:
    shown = await run("throttle_for_a_ui", database_url)
    assert shown[-1] == 149
    assert shown == sorted(set(shown))
    assert len(shown) < 50


async def test_heartbeat_fills_the_silence_after_the_event(database_url: str) -> None:
    assert await run("heartbeat_when_idle", database_url) == ["alerts.disk", "beat", "beat"]


async def test_a_subscription_feeds_a_queue_one_job_per_event(database_url: str) -> None:
    sent = await run("subscription_into_a_queue", database_url)
    assert sorted(sent) == ["ann@example.com", "bob@example.com"]


def test_every_public_name_is_documented() -> None:
    guide = (EXAMPLES.parents[1] / "docs" / "python.md").read_text()
    assert [name for name in services.__all__ if f"`{name}" not in guide] == []
