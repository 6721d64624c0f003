"""PNG charts (matplotlib, Agg): latency CDF, throughput by concurrency, memory by
connections. Each returns the file it wrote, or None when its scenario has no data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench.model import ScenarioResult

SIZE = (6.4, 4.0)
DPI = 90


def _series(results: list[ScenarioResult], key: str) -> dict[str, Any] | None:
    for result in results:
        if result.key == key and result.series and not result.error:
            return result.series
    return None


def _save(path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Label, grid and legend the current figure, then write it to `path`."""
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    plt.title(title)
    plt.grid(True, which="both", alpha=0.3)
    plt.legend(fontsize="small")
    plt.tight_layout()
    plt.savefig(path, dpi=DPI)
    plt.close()
    return path


def _style(name: str) -> str:
    """SSE solid, WebSocket dashed, the baseline dotted (SSE and WS often overlap)."""
    if "WS" in name:
        return "--"
    return ":" if "baseline" in name else "-"


def latency_cdf(results: list[ScenarioResult], path: Path) -> Path | None:
    series = _series(results, "latency")
    if series is None:
        return None
    plt.figure(figsize=SIZE)
    rates: list[str] = []
    for name, points in series["cdf"].items():
        rate = name.rpartition("@")[2]
        if rate not in rates:
            rates.append(rate)
        if points:
            plt.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                label=name,
                color=f"C{rates.index(rate)}",
                linestyle=_style(name),
            )
    plt.xscale("log")
    return _save(
        path,
        "End-to-end latency CDF",
        "latency, send to client (ms, log scale)",
        "fraction of events",
    )


def throughput(results: list[ScenarioResult], path: Path) -> Path | None:
    series = _series(results, "publish")
    if series is None:
        return None
    plt.figure(figsize=SIZE)
    levels = series["concurrency"]
    for key, label in (
        ("http_single", "pgcast HTTP, 1 event/request"),
        ("sql_publish", "pgcast SQL publish"),
        ("raw_baseline", "raw INSERT+NOTIFY (baseline)"),
    ):
        plt.plot(levels, series[key], marker="o", label=label)
    batch = series["http_batch"]
    plt.scatter(
        [batch["concurrency"]],
        [batch["events_per_s"]],
        marker="*",
        s=120,
        color="black",
        label="pgcast HTTP, 100 events/request",
        zorder=3,
    )
    plt.xscale("log", base=2)
    plt.yscale("log")
    plt.xticks(levels, [str(level) for level in levels])
    return _save(
        path,
        "Publish throughput against concurrency",
        "concurrent clients / connections",
        "events/s committed (log scale)",
    )


def memory(results: list[ScenarioResult], path: Path) -> Path | None:
    series = _series(results, "memory")
    if series is None:
        return None
    plt.figure(figsize=SIZE)
    for name, points in series.items():
        plt.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    return _save(
        path, "Server memory against connections", "idle SSE connections", "server RSS (MiB)"
    )


CHARTS = {"latency-cdf": latency_cdf, "throughput": throughput, "memory": memory}


def draw_all(results: list[ScenarioResult], folder: Path, prefix: str) -> dict[str, Path]:
    """Every chart that has data, as `<prefix>-<name>.png` in `folder`."""
    drawn = {}
    for name, draw in CHARTS.items():
        path = draw(results, folder / f"{prefix}-{name}.png")
        if path is not None:
            drawn[name] = path
    return drawn
