"""How big each scenario is: the default suite (under 5 minutes) and `--quick`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """Every knob of the suite; `QUICK` is a seconds-long smoke version."""

    client_processes: int = 2
    payload_padding: int = 40
    # 1. publish throughput
    publish_seconds: float = 3.0
    publish_concurrency: tuple[int, ...] = (1, 16, 64)
    batch_size: int = 100
    batch_concurrency: int = 16
    # 2. latency
    latency_rates: tuple[float, ...] = (1000.0, 100.0)
    latency_seconds: float = 5.0
    latency_sse: int = 100
    latency_ws: int = 100
    latency_publishers: int = 16
    sql_latency_rates: tuple[float, ...] = (1000.0, 2500.0)
    fairness_subscribers: int = 1000  # publish round trips while the server fans out
    fairness_rate: float = 100.0
    # 3. fan-out
    fanout_clients: int = 1000
    fanout_events: int = 50
    naive_listeners: int = 300
    # 4. idle memory
    # 19,000 idle subscribers in one process: the open-files hard limit here is 20,000
    memory_steps: tuple[int, ...] = (1000, 5000, 19_000)
    memory_settle_seconds: float = 1.0
    memory_ceiling_max: int = 5000  # WebSocket and raw-server steps stop here (ports)
    crowd: int = 19_000  # > 0: the idle-crowd check at the last memory step, if reached
    # 5. queue
    queue_jobs: tuple[int, ...] = (3000, 20_000)  # a short run, then a sustained one
    queue_consumers: int = 8
    queue_prefetch: tuple[int, ...] = (1, 10)
    # 6. capture
    capture_rows: int = 100_000
    # waiting for stragglers
    drain_seconds: float = 20.0


FULL = Sizes()

QUICK = Sizes(
    client_processes=1,
    publish_seconds=0.3,
    publish_concurrency=(2,),
    batch_size=10,
    batch_concurrency=2,
    latency_rates=(100.0,),
    latency_seconds=0.5,
    latency_sse=3,
    latency_ws=3,
    latency_publishers=2,
    sql_latency_rates=(100.0,),
    fairness_subscribers=10,
    fanout_clients=10,
    fanout_events=10,
    naive_listeners=5,
    memory_steps=(10, 20),
    crowd=0,
    memory_settle_seconds=0.1,
    queue_jobs=(40,),
    queue_consumers=2,
    queue_prefetch=(1,),
    capture_rows=500,
    drain_seconds=5.0,
)
