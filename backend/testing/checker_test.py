"""The fault-injection checker: it must pass exact deliveries and name the first fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.connectors.database import connect
from backend.entities.event import format_id
from backend.testing.checker import (
    EARLIEST,
    LogEvent,
    QueueRow,
    Received,
    check_queue,
    check_streams,
    fail_on,
    publish_problems,
    queue_problems,
    read_ids,
    read_log,
    stream_problem,
)

LOG = [format_id(p) for p in (2, 3, 5, 8, 9)]


def received(*positions: int, start: str = EARLIEST) -> Received:
    sub = Received("sub", start)
    for position in positions:
        sub.add(format_id(position))
    return sub


def test_exact_delivery_passes() -> None:
    assert stream_problem(received(2, 3, 5, 8, 9), LOG) is None
    assert stream_problem(received(5, 8, start=format_id(3)), LOG) is None
    assert stream_problem(received(), LOG) is None
    assert stream_problem(received(start=format_id(9)), LOG, through=format_id(9)) is None


def test_a_prefix_is_fine_up_to_the_final_position_but_not_short_of_through() -> None:
    assert stream_problem(received(2, 3), LOG) is None
    problem = stream_problem(received(2, 3), LOG, through=format_id(9))
    assert problem is not None
    assert "missing 3 of 5" in problem
    assert f"first missing {format_id(5)}" in problem


def test_the_first_missing_id_is_named() -> None:
    problem = stream_problem(received(2, 3, 8, 9), LOG)
    assert problem is not None
    assert f"first missing {format_id(5)}" in problem
    assert f"last received before it: {format_id(3)}" in problem


def test_a_missing_first_event_after_the_start_is_found() -> None:
    problem = stream_problem(received(3, 5, 8, 9), LOG)
    assert problem is not None
    assert f"first missing {format_id(2)}" in problem


def test_a_duplicate_is_named() -> None:
    problem = stream_problem(received(2, 3, 5, 5, 8, 9), LOG)
    assert problem is not None
    assert problem.startswith(f"sub: duplicate {format_id(5)}")


def test_a_replay_of_an_earlier_event_is_a_duplicate() -> None:
    problem = stream_problem(received(2, 3, 5, 3, 8), LOG)
    assert problem is not None
    assert f"duplicate {format_id(3)}" in problem


def test_out_of_order_is_named() -> None:
    problem = stream_problem(received(2, 5, 3, 8, 9), LOG)
    assert problem is not None
    assert f"out of order: {format_id(3)} arrived after {format_id(5)}" in problem


def test_an_event_at_or_before_the_start_is_out_of_order() -> None:
    problem = stream_problem(received(3, 5, start=format_id(3)), LOG)
    assert problem is not None
    assert "out of order" in problem


def test_an_event_not_in_the_log_is_named() -> None:
    problem = stream_problem(received(2, 3, 4, 5), LOG)
    assert problem is not None
    assert f"received {format_id(4)}, which is not in the log" in problem


def test_publish_problems() -> None:
    log = [
        LogEvent(format_id(1), "t", {"label": "a-0"}),
        LogEvent(format_id(2), "t", {"label": "a-1"}),
        LogEvent(format_id(4), "t", {"label": "a-1"}),
        LogEvent(format_id(5), "t", 7),
    ]
    assert publish_problems(log[:2], {"a-0": format_id(1), "a-1": format_id(2)}) == []
    (twice,) = publish_problems(log, {})
    assert "'a-1'" in twice
    assert format_id(2) in twice
    assert format_id(4) in twice
    (false_201,) = publish_problems(log[:2], {"a-2": format_id(3)})
    assert f"id {format_id(3)}, which is not in the log" in false_201
    (wrong,) = publish_problems(log[:2], {"a-0": format_id(2)})
    assert "the log has 'a-1'" in wrong
    (unacked,) = publish_problems(log[:2], {"a-0": format_id(1)}, expected=["a-0", "a-1"])
    assert "first 'a-1'" in unacked


def test_fail_on_lists_every_problem() -> None:
    fail_on([])
    with pytest.raises(AssertionError, match=r"ctx: 2 problem\(s\)\n  one\n  two"):
        fail_on(["one", "two"], "ctx")


ROWS = [
    QueueRow(1, "acked", 1, 5),
    QueueRow(2, "acked", 3, 5),
    QueueRow(3, "dead", 5, 5),
]


def test_a_clean_queue_passes() -> None:
    assert queue_problems(ROWS, enqueued=[1, 2, 3], acks=[1, 2], processed=[1, 2, 2, 3]) == []


def test_queue_faults_are_named() -> None:
    rows = [*ROWS, QueueRow(4, "leased", 1, 5), QueueRow(6, "dead", 2, 5)]
    problems = queue_problems(
        rows, enqueued=[1, 2, 3, 4, 5, 6], acks=[1, 2, 2, 3], processed=[1, 1, 2]
    )
    text = "\n".join(problems)
    assert "1 enqueued messages are not in the queue; first 5" in text
    assert "first 4 is leased" in text
    assert "acked more than once; first 2 (2 acks)" in text
    assert "in the ack logs are not acked; first 3 is dead" in text
    assert "dead-lettered early; first 6 after 2 of 5" in text
    assert "processed more often than delivered; first 1 processed 2 times in 1" in text
    assert "messages were never enqueued" not in text


def test_acks_missing_from_the_logs_are_counted_against_the_allowance() -> None:
    (problem,) = queue_problems(ROWS, enqueued=[1, 2, 3], acks=[1])
    assert "1 acked messages are in no ack log (at most 0 allowed); first 2" in problem
    assert queue_problems(ROWS, enqueued=[1, 2, 3], acks=[1], unlogged_acks=1) == []
    assert queue_problems(ROWS, enqueued=[1, 2, 3], acks=[], unlogged_acks=None) == []


def test_an_acked_message_nobody_processed_is_named() -> None:
    (problem,) = queue_problems(ROWS, enqueued=[1, 2, 3], acks=[1, 2], processed=[1, 3])
    assert "acked messages were never processed; first 2" in problem


def test_read_ids(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("1\n2\n")
    (tmp_path / "b").write_text("3\n")
    assert read_ids([tmp_path / "a", tmp_path / "b", tmp_path / "none"]) == [1, 2, 3]


@pytest.mark.integrated
@pytest.mark.anyio
async def test_the_log_and_queue_readers_see_committed_rows(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        # Published by SQL and not yet sequenced: the reader runs the sequencer first.
        await conn.execute("SELECT pgcast.publish('ck.a', $1::jsonb)", {"label": "x-0"})
        await conn.execute("SELECT pgcast.publish('ck.b', $1::jsonb)", {"label": "x-1"})
        await conn.execute("SELECT pgcast.publish('ck.c', $1::jsonb)", 3)
        await conn.execute(
            "INSERT INTO pgcast.queue_messages (queue, data, state, attempt) VALUES"
            " ('ckq', '1', 'acked', 1), ('ckq', '2', 'ready', 0)"
        )
        pending = await conn.fetchval("SELECT count(*) FROM pgcast.events WHERE pos IS NULL")
    finally:
        await conn.close()
    assert pending == 3
    log = await read_log(database_url, ["ck.a", "ck.b"])
    assert [(e.topic, e.label) for e in log] == [("ck.a", "x-0"), ("ck.b", "x-1")]
    assert log[0].id < log[1].id
    sub = Received("all")
    for event in log:
        sub.add(event.id)
    await check_streams(database_url, ["ck.a", "ck.b"], [sub], acked={"x-0": log[0].id})
    with pytest.raises(AssertionError, match="first missing"):
        await check_streams(database_url, ["ck.a", "ck.b"], [Received("none")], through=log[1].id)
    with pytest.raises(AssertionError, match="first 2 is ready"):
        await check_queue(database_url, "ckq", enqueued=[1, 2], acks=[1])
