"""Rows of pgcast ÷ peer: medians over repetitions, ratios within each, notes kept."""

from __future__ import annotations

from bench.peers.tally import Tally


def test_rows_hold_medians_and_the_spread_of_ratios_within_repetitions() -> None:
    tally = Tally()
    for rep, (ours, theirs) in enumerate([(10.0, 5.0), (30.0, 10.0), (20.0, 20.0)]):
        tally.add(rep, "pgcast", {"case": {"events/s": ours}})
        tally.add(rep, "peer", {"case": {"events/s": theirs}})
    (row,) = tally.rows([("events/s", "higher")], ["pgcast"], ["peer"])
    assert (row.case, row.metric, row.baseline_name) == ("case", "events/s", "peer")
    assert (row.pgcast, row.baseline) == (20.0, 10.0)
    assert row.note.startswith("ratio 1.00–3.00 over 3 reps; pgcast 10–30; peer 5.00–20")


def test_a_repetition_the_peer_missed_has_no_ratio_and_a_missing_value_is_skipped() -> None:
    tally = Tally()
    tally.add(0, "pgcast", {"case": {"p99 ms": 2.0, "server CPU %": None}})
    tally.add(1, "pgcast", {"case": {"p99 ms": 4.0}})
    tally.add(1, "peer", {"case": {"p99 ms": 1.0}})
    rows = tally.rows([("p99 ms", "lower"), ("server CPU %", "lower")], ["pgcast"], ["peer"])
    latency, cpu = rows
    assert (latency.pgcast, latency.baseline, latency.better) == (3.0, 1.0, "lower")
    assert latency.note.startswith("ratio 4.00–4.00 over 1 reps")
    assert (cpu.pgcast, cpu.baseline) == (None, None)
    assert cpu.note == ""


def test_several_variants_get_labelled_rows_and_notes_follow_their_system() -> None:
    tally = Tally()
    for variant, value in (("pgcast prefetch 1", 5000.0), ("pgcast prefetch 10", 15000.0)):
        tally.add(0, variant, {"jobs": {"jobs/s": value}})
    tally.add(0, "peer", {"jobs": {"jobs/s": 7500.0}})
    tally.note("jobs", "peer", "peer's publisher at 90% CPU")
    rows = tally.rows([("jobs/s", "higher")], ["pgcast prefetch 1", "pgcast prefetch 10"], ["peer"])
    assert [row.case for row in rows] == ["jobs, pgcast prefetch 1", "jobs, pgcast prefetch 10"]
    assert [round(row.pgcast / row.baseline, 2) for row in rows if row.pgcast and row.baseline] == [
        0.67,
        2.0,
    ]
    assert all(row.note.endswith("peer's publisher at 90% CPU") for row in rows)
    assert "pgcast 5.0k–5.0k" in rows[0].note
