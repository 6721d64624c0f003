"""GET /topics and `pgcast topics` against a real server."""

from __future__ import annotations

import httpx
import orjson
import pytest

from backend.testing.cli import run
from backend.testing.security import auth_server, bearer, token
from backend.testing.server import ServerProcess

pytestmark = pytest.mark.external


def publish(server: ServerProcess, topic: str, count: int) -> str:
    body = [{"data": n} for n in range(count)]
    response = httpx.post(f"{server.url}/topics/{topic}/events", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["events"][-1]["id"])


def test_topics_are_listed_with_counts_filtered_and_paged(server: ServerProcess) -> None:
    newest = {"shop.orders": publish(server, "shop.orders", 3)}
    newest["shop.carts"] = publish(server, "shop.carts", 1)
    newest["news"] = publish(server, "news", 2)
    newest["shop.orders"] = publish(server, "shop.orders", 1)

    every = httpx.get(f"{server.url}/topics", timeout=10).json()
    assert [(t["topic"], t["events"], t["newest_id"]) for t in every["topics"]] == [
        ("news", 2, newest["news"]),
        ("shop.carts", 1, newest["shop.carts"]),
        ("shop.orders", 4, newest["shop.orders"]),
    ]
    assert every["next"] is None
    assert all(t["newest_time"].endswith("Z") for t in every["topics"])

    page = httpx.get(f"{server.url}/topics?pattern=shop.*&limit=1", timeout=10).json()
    assert [t["topic"] for t in page["topics"]] == ["shop.carts"]
    assert page["next"] == "shop.carts"
    page = httpx.get(f"{server.url}/topics?pattern=shop.*&limit=1&after=shop.carts").json()
    assert [t["topic"] for t in page["topics"]] == ["shop.orders"]

    for query, code in [
        ("pattern=shop..x", "invalid_topic"),
        ("limit=0", "invalid_parameter"),
        ("after=a%20b", "invalid_topic"),
    ]:
        response = httpx.get(f"{server.url}/topics?{query}", timeout=10)
        assert (response.status_code, response.json()["error"]) == (400, code), query

    listed = run(server.url, "topics", "shop.>")
    assert listed.returncode == 0, listed.stderr
    assert [orjson.loads(line)["topic"] for line in listed.stdout.splitlines()] == [
        "shop.carts",
        "shop.orders",
    ]
    assert run(server.url, "topics", "--limit", "1").stdout.count("\n") == 1


def test_listing_topics_needs_a_subscribe_grant_for_the_pattern() -> None:
    with auth_server() as server:
        admin = token(publish=[">"])
        reader = token(subscribe=["shop.>"])
        for topic in ("shop.a", "secret.b"):
            response = httpx.post(
                f"{server.url}/topics/{topic}/events", json={"data": 1}, headers=bearer(admin)
            )
            assert response.status_code == 201, response.text
        assert httpx.get(f"{server.url}/topics").status_code == 401
        assert httpx.get(f"{server.url}/topics", headers=bearer(reader)).status_code == 403
        allowed = httpx.get(f"{server.url}/topics?pattern=shop.>", headers=bearer(reader))
        assert [t["topic"] for t in allowed.json()["topics"]] == ["shop.a"]
