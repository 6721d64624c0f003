"""Prometheus metrics, one registry per app (several apps may live in one process)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from backend.entities.event import Event
from backend.services.engine import Engine

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class EngineCollector(Collector):
    """Reads the engine's own counters at scrape time (no bookkeeping on the hot path)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        if engine is None:
            return
        hub = engine.hub
        yield GaugeMetricFamily(
            "pgcast_subscriptions",
            "Open subscriptions (live, lagging or catching up)",
            hub.subscribers + hub.draining + hub.catching_up,
        )
        yield GaugeMetricFamily(
            "pgcast_lagging_subscribers",
            "Subscriptions behind the live path: draining after an overflow or reading the log",
            hub.draining + hub.catching_up,
        )
        yield GaugeMetricFamily(
            "pgcast_log_position", "Last position the hub has read", hub.position
        )
        yield CounterMetricFamily(
            "pgcast_listener_reconnects",
            "Reconnects of the LISTEN connection",
            engine.listener.reconnects,
        )
        yield GaugeMetricFamily(
            "pgcast_listener_up",
            "1 while the LISTEN connection is healthy",
            int(engine.listener.healthy),
        )
        yield CounterMetricFamily(
            "pgcast_subscriber_overflows",
            "Times a subscriber's buffer overflowed",
            hub.stats.lag_events,
        )


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    engine_collector: EngineCollector = field(default_factory=EngineCollector)

    def __post_init__(self) -> None:
        self._per_transport: dict[str, tuple[Counter, Histogram]] = {}
        r = self.registry
        r.register(self.engine_collector)
        self.connections = Gauge(
            "pgcast_connections", "Open streaming connections", ["transport"], registry=r
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
        self.engine_collector.engine = engine
        engine.committer.on_batch = self.batch_size.observe

    def delivered(self, transport: str, events: Sequence[Event]) -> None:
        """One write of `events` to a client: counts each, and one lag sample for the write.

        The sample is the age of the oldest event in the write, so a histogram bucket reads
        "writes whose oldest event was this late"; per write rather than per event keeps
        the cost off busy streams (the labelled children are looked up once per transport).
        """
        if not events:
            return
        children = self._per_transport.get(transport)
        if children is None:
            children = (self.delivered_total.labels(transport), self.delivery_lag.labels(transport))
            self._per_transport[transport] = children
        children[0].inc(len(events))
        children[1].observe(max(0.0, time.time() - events[0].time.timestamp()))

    async def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4")
