"""Prometheus metrics, one registry per app (several apps may live in one process).

With `serve --workers N` every worker counts into files of a shared directory
(prometheus-client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR set by the parent), and
whichever worker answers a scrape reports the sum over all of them. The engine's
own figures are copied into gauges and counters at each scrape and, with several workers,
also about once a second.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from backend.entities.event import Event
from backend.services.engine import Engine

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


SHARED_REFRESH_SECONDS = 1.0


def shared_metrics_dir() -> str | None:
    """The multiprocess directory when several workers share the metrics, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class DirectTally:
    """Events the hub wrote straight to one transport's clients since the last flush.

    Counted with plain attributes, since the hub may make a thousand direct writes per
    event; `Metrics.flush_direct` turns them into the delivered counter and one lag sample
    per read of the log (the age of its oldest event written directly).
    """

    __slots__ = ("count", "oldest")

    def __init__(self) -> None:
        self.count = 0
        self.oldest: Event | None = None

    def add(self, events: Sequence[Event]) -> None:
        self.count += len(events)
        if self.oldest is None:
            self.oldest = events[0]


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    engine: Engine | None = None

    def __post_init__(self) -> None:
        self._per_transport: dict[str, tuple[Counter, Histogram]] = {}
        self._tallies: dict[str, DirectTally] = {}
        self.shared_dir = shared_metrics_dir()
        r = self.registry
        self.engine_figures = EngineFigures(r)
        self.connections = Gauge(
            "pgcast_connections",
            "Open streaming connections",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.published = Counter(
            "pgcast_events_published", "Events published through this process", registry=r
        )
        self.delivered_total = Counter(
            "pgcast_events_delivered", "Events written to clients", ["transport"], registry=r
        )
        self.delivery_lag = Histogram(
            "pgcast_delivery_lag_seconds",
            "From the event's commit to being written to the client socket",
            ["transport"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pgcast_group_commit_batch_events",
            "Events per group-commit transaction",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        engine.committer.on_batch = self.batch_size.observe
        engine.hub.after_dispatch.append(self.flush_direct)

    def tally(self, transport: str) -> DirectTally:
        """The tally of direct writes to `transport`'s clients (one per transport)."""
        tally = self._tallies.get(transport)
        if tally is None:
            tally = self._tallies[transport] = DirectTally()
        return tally

    def flush_direct(self) -> None:
        """Count what the hub wrote directly since the last flush."""
        for transport, tally in self._tallies.items():
            oldest = tally.oldest
            if oldest is not None:
                counter, lag = self._children(transport)
                counter.inc(tally.count)
                lag.observe(max(0.0, time.time() - oldest.time.timestamp()))
                tally.count = 0
                tally.oldest = None

    def delivered(self, transport: str, events: Sequence[Event]) -> None:
        """One write of `events` to a client: counts each, and one lag sample for the write.

        The sample is the age of the oldest event in the write, so a histogram bucket reads
        "writes whose oldest event was this late"; per write rather than per event keeps
        the cost off busy streams (the labelled children are looked up once per transport).
        """
        if not events:
            return
        counter, lag = self._children(transport)
        counter.inc(len(events))
        lag.observe(max(0.0, time.time() - events[0].time.timestamp()))

    def _children(self, transport: str) -> tuple[Counter, Histogram]:
        children = self._per_transport.get(transport)
        if children is None:
            children = (self.delivered_total.labels(transport), self.delivery_lag.labels(transport))
            self._per_transport[transport] = children
        return children

    async def refresh_shared(self) -> None:
        """With shared metrics: copy the engine's figures out about once a second."""
        if self.shared_dir is None:
            return
        while True:
            self._copy_engine_figures()
            await anyio.sleep(SHARED_REFRESH_SECONDS)

    def _copy_engine_figures(self) -> None:
        if self.engine is not None:
            self.engine_figures.copy_from(self.engine)

    async def endpoint(self, _request: Request) -> Response:
        self.flush_direct()
        self._copy_engine_figures()
        registry = self.registry
        if self.shared_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


class EngineFigures:
    """The engine's own counters, copied into metrics at each scrape (nothing is counted on
    the hot path) and, with several workers, also about once a second, so that the other
    workers' files are fresh whichever worker answers; gauges then sum over live workers
    (the position is the highest, `listener_up` the lowest)."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.subscriptions = Gauge(
            "pgcast_subscriptions",
            "Open subscriptions (live, lagging or catching up)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.lagging = Gauge(
            "pgcast_lagging_subscribers",
            "Subscriptions behind the live path: draining after an overflow or reading the log",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.position = Gauge(
            "pgcast_log_position",
            "Last position the hub has read",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.listener_up = Gauge(
            "pgcast_listener_up",
            "1 while the LISTEN connection is healthy",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.reconnects = Counter(
            "pgcast_listener_reconnects", "Reconnects of the LISTEN connection", registry=r
        )
        self.overflows = Counter(
            "pgcast_subscriber_overflows", "Times a subscriber's buffer overflowed", registry=r
        )
        self.reads = Counter(
            "pgcast_hub_reads", "Reads of the log by the hub (at most one per wake-up)", registry=r
        )
        self.deliveries = Counter(
            "pgcast_hub_deliveries",
            "Events the hub handed to live subscribers, directly or through their buffers",
            registry=r,
        )
        self.direct = Counter(
            "pgcast_hub_direct_deliveries",
            "Of the hub's deliveries, those it wrote straight to the client's connection",
            registry=r,
        )
        self.handed = Counter(
            "pgcast_hub_handed_events",
            "Events this process positioned (its publishes, its sequencer's runs) that the hub"
            " handed out without reading them back",
            registry=r,
        )
        self.sequencer_runs = Counter(
            "pgcast_sequencer_runs",
            "Runs of this process's sequencer, which positions SQL-published and captured events",
            registry=r,
        )
        self.sequencer_spacing = Gauge(
            "pgcast_sequencer_spacing_seconds",
            "Current spacing between sequencer runs while wake-ups keep coming (or, while the"
            " log is busy, between its polls)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._counted = (0, 0, 0, 0, 0, 0, 0)

    def copy_from(self, engine: Engine) -> None:
        hub = engine.hub
        self.subscriptions.set(hub.subscribers + hub.draining + hub.catching_up)
        self.lagging.set(hub.draining + hub.catching_up)
        self.position.set(hub.position)
        self.listener_up.set(int(engine.listener.healthy))
        self.sequencer_spacing.set(engine.sequencer.spacing)
        now = (
            engine.listener.reconnects,
            hub.stats.overflows,
            hub.stats.reads,
            hub.stats.deliveries,
            hub.stats.direct,
            hub.stats.handed,
            engine.sequencer.runs,
        )
        for counter, value, before in zip(
            (
                self.reconnects,
                self.overflows,
                self.reads,
                self.deliveries,
                self.direct,
                self.handed,
                self.sequencer_runs,
            ),
            now,
            self._counted,
            strict=True,
        ):
            counter.inc(value - before)
        self._counted = now
