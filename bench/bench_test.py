"""Smoke test of the benchmark harness: `python -m bench --quick` end to end.

It asserts that every scenario produced numbers and that the files were written, never
what the numbers are: timings belong in `make bench`, not in `make test`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["publish", "latency", "fanout", "memory", "queue", "capture"]
CHARTS = ["latency-cdf", "throughput", "memory"]


@pytest.mark.external
@pytest.mark.timeout(240)
def test_quick_run_measures_every_scenario_and_writes_its_files(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    (record,) = tmp_path.glob("*.json")
    data = json.loads(record.read_text())
    assert [s["key"] for s in data["scenarios"]] == SCENARIOS
    for scenario in data["scenarios"]:
        assert scenario["error"] is None, scenario["error"]
        assert scenario["rows"], scenario["key"]
        for row in scenario["rows"]:
            assert isinstance(row["pgcast"], int | float), (scenario["key"], row)
            assert isinstance(row["baseline"], int | float), (scenario["key"], row)
    machine = data["machine"]
    for field in ("cpu", "cores", "memory_gib", "python", "postgres", "pgcast_commit", "allocator"):
        assert machine[field], field

    stamp = record.stem
    assert (tmp_path / f"{stamp}.md").read_text() == (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.md").read_text().startswith("# pgcast benchmark summary")
    for chart in CHARTS:
        png = tmp_path / f"{stamp}-{chart}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
