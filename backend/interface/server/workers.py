"""`pgcast serve --workers N`: N server processes sharing one listening socket.

Each worker is a whole pgcast process (its own engine: pool, LISTEN connection, hub), so a
worker that dies takes nothing from the others, and clients resume on any of them. The
parent binds the socket once and hands it to workers started with `spawn` (a fork would
inherit the parent's interpreter state); the kernel spreads new connections over the
workers' accept calls. The parent restarts a worker that dies and, on SIGTERM or SIGINT,
asks every worker to drain (the same graceful shutdown as a single process) and waits.

A small parent of our own instead of uvicorn's: its workers run plain `uvicorn.Server`,
and ours must run `runner.Server`, which lets open streams say goodbye on shutdown.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn

from backend.core.errors import PgcastError
from backend.core.logging import configure_logging
from backend.core.settings import Settings
from backend.interface.server import runner
from backend.interface.server.exits import CONFIG_STATUS, UNREACHABLE_STATUS, describe

log = logging.getLogger("pgcast.workers")

STARTUP_FAILURES = frozenset({CONFIG_STATUS, UNREACHABLE_STATUS})
MIN_LIFETIME_SECONDS = 1.0  # a worker dying sooner is restarted no faster than this
STOP_SECONDS = runner.GRACEFUL_SECONDS + runner.STREAM_GOODBYE_SECONDS + 3
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve_worker(settings: Settings, sock: socket.socket) -> None:
    """A worker process: one pgcast server on the inherited socket.

    A typed error (the app could not start) ends it with one line and the documented
    status, which tells the parent to stop rather than start it again.
    """
    configure_logging(settings.log_level, settings.log_format)
    try:
        runner.serve(settings, sockets=[sock])
    except PgcastError as exc:
        line, status = describe(exc)
        print(line, file=sys.stderr, flush=True)
        sys.exit(status)


class Supervisor:
    """Keeps `count` workers running until asked to stop."""

    def __init__(self, settings: Settings, sock: socket.socket, count: int) -> None:
        self.settings = settings
        self.sock = sock
        self.count = count
        self.stopping = threading.Event()
        self.workers: list[tuple[BaseProcess, float]] = []
        self._context = multiprocessing.get_context("spawn")

    def _start(self) -> tuple[BaseProcess, float]:
        process = self._context.Process(
            target=serve_worker, args=(self.settings, self.sock), name="pgcast-worker"
        )
        process.start()
        log.info("worker %d started", process.pid)
        return process, time.monotonic()

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stopping.set()

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (exit 0) or a worker that cannot start (its status)."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        self.workers = [self._start() for _ in range(self.count)]
        status = 0
        while not self.stopping.wait(0.2):
            status = self._replace_dead()
            if status:
                break
        self._stop_all()
        return status

    def _replace_dead(self) -> int:
        for index, (process, started) in enumerate(self.workers):
            if process.is_alive():
                continue
            process.join()
            _forget_metrics(process.pid)
            if process.exitcode in STARTUP_FAILURES:
                log.info("worker %d could not start; stopping the others", process.pid)
                return int(process.exitcode)
            log.warning(
                "worker %d exited with status %s; starting a new one", process.pid, process.exitcode
            )
            time.sleep(max(0.0, started + MIN_LIFETIME_SECONDS - time.monotonic()))
            self.workers[index] = self._start()
        return 0

    def _stop_all(self) -> None:
        for process, _ in self.workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process, _ in self.workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %d did not stop in %d s; killing it", process.pid, STOP_SECONDS)
                process.kill()
                process.join()


def _forget_metrics(pid: int | None) -> None:
    """Drop a dead worker's live gauges from the shared metrics directory."""
    path = os.environ.get(METRICS_DIR_ENV)
    if path and pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def supervise(settings: Settings, *, host: str, port: int, count: int) -> int:
    """Bind once, run `count` workers, return the exit status."""
    config = uvicorn.Config(
        "backend.interface.server.app:create_app", host=host, port=port, log_config=None
    )
    try:
        sock = config.bind_socket()
    except SystemExit as exit_:
        raise runner.cannot_listen(config, exit_) or exit_ from None
    metrics_dir = tempfile.mkdtemp(prefix="pgcast-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir
    try:
        log.info("serving with %d workers", count)
        return Supervisor(settings, sock, count).run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
