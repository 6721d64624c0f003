"""`python -m bench`: run the suite, print the table, write JSON, markdown and charts."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench import charts, report
from bench.machine import ROOT, install_jemalloc, machine_info
from bench.model import ScenarioResult
from bench.peers import suite as peers_suite
from bench.procs import raise_nofile
from bench.scenarios import registry
from bench.scenarios.common import Context
from bench.sizes import FULL, QUICK
from bench.stack import Stack

DEFAULT_OUT = ROOT / "bench" / "results"
DOCS_CHARTS = ROOT / "docs" / "perf"


def parse(argv: list[str] | None) -> argparse.Namespace:
    scenarios = registry()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="pgcast benchmarks with baselines measured in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke sizes")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"result folder (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(scenarios),
        help=(
            "run only this scenario (repeatable); default: all, in suite order; with --peers,"
            " the peer scenarios among them"
        ),
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="instead of the baselines, compare pgcast with Nchan, broadcaster, pgqueuer and "
        "procrastinate (installed into .tools/peers/ on first use); see bench/peers/README.md",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=0,
        help="with --peers: repetitions of each scenario (default 3, 1 with --quick)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"also copy the charts to {DOCS_CHARTS.relative_to(ROOT)}/",
    )
    return parser.parse_args(argv)


def run_scenario(key: str, ctx: Context) -> ScenarioResult:
    title, method, function = registry()[key]
    started = time.monotonic()
    print(f"[bench] {key}: {title} ...", flush=True)
    try:
        result = function(ctx)
    except Exception:  # noqa: BLE001  (one failed scenario must not hide the others)
        result = ScenarioResult(key, title, method, error=traceback.format_exc())
        print(result.error, file=sys.stderr, flush=True)
    result.seconds = time.monotonic() - started
    print(f"[bench] {key}: done in {result.seconds:.1f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # A SIGTERM (e.g. `timeout`) still stops Postgres, the server and the children.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    logging.basicConfig(level=logging.WARNING)
    raise_nofile()
    if not args.quick:
        install_jemalloc()
    if args.peers:
        return peers_suite.main(args)
    sizes = QUICK if args.quick else FULL
    keys = args.only or list(registry())
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    print(f"[bench] starting PostgreSQL (durable) and migrating; results in {out}", flush=True)
    stack = Stack.start()
    try:
        machine = machine_info(stack.version(), stack.workdir)
        if args.quick:
            stack.share_one_server()
        ctx = Context(stack, sizes)
        results = [run_scenario(key, ctx) for key in keys]
    finally:
        stack.destroy()
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    run = {
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "started": started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "sizes": vars(sizes),
        "machine": machine,
    }
    drawn = charts.draw_all(results, out, stamp)
    text = report.markdown(run, results, [p.name for p in drawn.values()])
    report.write_json(out / f"{stamp}.json", report.record(run, results))
    (out / f"{stamp}.md").write_text(text)
    (out / "summary.md").write_text(text)
    if args.update_docs:
        DOCS_CHARTS.mkdir(parents=True, exist_ok=True)
        for name, path in drawn.items():
            shutil.copyfile(path, DOCS_CHARTS / f"{name}.png")
    print()
    print(report.table(results))
    print(
        f"\n[bench] {run['seconds']:.0f} s; wrote {out / (stamp + '.json')}, "
        f"{out / (stamp + '.md')}, {out / 'summary.md'} and {len(drawn)} charts"
    )
    return 1 if any(r.error for r in results) else 0
