"""The printed table, the JSON record and the markdown summary of one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.model import Row, ScenarioResult

HEADERS = ("Scenario", "Case", "Metric", "pgcast", "Baseline", "Ratio", "Baseline is")


def number(value: float | None) -> str:
    """Readable numbers: thousands separators for rates, decimals for small values."""
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(row: Row) -> str:
    return "n/a" if row.ratio is None else f"{row.ratio:.2f}x"


def cells(result: ScenarioResult, row: Row) -> tuple[str, ...]:
    return (
        result.key,
        row.case,
        row.metric,
        number(row.pgcast),
        number(row.baseline),
        ratio(row),
        row.baseline_name,
    )


def table(results: list[ScenarioResult]) -> str:
    """A fixed-width text table of every row, errors listed after it."""
    lines = [cells(r, row) for r in results for row in r.rows]
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(HEADERS)]
    out = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out += [f"{r.key}: FAILED: {r.error.strip().splitlines()[-1]}" for r in results if r.error]
    return "\n".join(out)


def record(run: dict[str, Any], results: list[ScenarioResult]) -> dict[str, Any]:
    return {**run, "scenarios": [r.as_json() for r in results]}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def markdown(run: dict[str, Any], results: list[ScenarioResult], charts: list[str]) -> str:
    """The summary quoted by docs/performance.md."""
    machine = run["machine"]
    lines = [
        "# pgcast benchmark summary",
        "",
        f"Run `{run['command']}` at {run['started']} in {run['seconds']:.0f} s "
        f"({'quick smoke sizes' if run['quick'] else 'default suite'}).",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
        f"Linux {machine['kernel']}; Python {machine['python']}; PostgreSQL "
        f"{machine['postgres']} (embedded, fsync on; 8 KiB write+fdatasync median "
        f"{machine['fsync_ms_median']} ms); pgcast `{machine['pgcast_commit']}`, memory "
        f"allocator {machine.get('allocator', 'not recorded')}; "
        f"load average (1, 5, 15 min) at start {machine['load_average_at_start']}, at end "
        f"{machine.get('load_average_at_end')}.",
        "",
        "Ratio = pgcast ÷ baseline, both measured in this run. For events/s, deliveries/s, "
        "jobs/s and changes/s higher is better; for ms and KiB lower is better.",
        "",
        "| Scenario | Case | Metric | pgcast | Baseline | Ratio | Baseline is | Note |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    lines.extend(
        f"| {result.key} | {row.case} | {row.metric} | {number(row.pgcast)} | "
        f"{number(row.baseline)} | {ratio(row)} | {row.baseline_name} | {row.note} |"
        for result in results
        for row in result.rows
    )
    failed = [r for r in results if r.error]
    if failed:
        lines += ["", "Failed scenarios:", ""]
        lines += [f"- {r.key}: `{r.error.strip().splitlines()[-1]}`" for r in failed if r.error]
    lines += ["", "## How each figure was measured", ""]
    lines += [f"- **{r.key}** ({r.seconds:.0f} s): {r.method}" for r in results]
    if charts:
        lines += ["", "Charts written next to this file: " + ", ".join(f"`{c}`" for c in charts)]
    return "\n".join(lines) + "\n"
