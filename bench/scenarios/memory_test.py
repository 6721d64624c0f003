"""The SSE memory row compares pgcast and the raw server at the same number of connections."""

from __future__ import annotations

from bench.scenarios.memory import _at


def _climb(points: list[tuple[int, float]]) -> dict[str, object]:
    top, rss = points[-1]
    return {
        "points": [{"connections": c, "rss_mib": r} for c, r in points],
        "connections": top,
        "target": top,
        "kib_per_connection": round((rss - points[0][1]) * 1024 / top, 2),
        "errors": [],
        "crowd": None,
    }


def test_a_climb_past_the_raw_servers_last_step_is_read_at_that_step() -> None:
    climb = _climb([(0, 70.0), (1000, 80.0), (5000, 130.0), (19_000, 320.0)])
    at = _at(climb, 5000)
    assert (at["connections"], at["kib_per_connection"]) == (5000, 12.29)
    assert [p["connections"] for p in at["points"]] == [0, 1000, 5000]
    assert climb["connections"] == 19_000  # the full climb is left as it was


def test_a_climb_that_stopped_at_the_same_step_is_unchanged() -> None:
    climb = _climb([(0, 70.0), (1000, 80.0), (5000, 130.0)])
    assert _at(climb, 5000) is climb
