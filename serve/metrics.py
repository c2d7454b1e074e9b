"""Prometheus metrics of the server, served on their own port (`e4t serve --metrics-port 9100`).

Process-wide, in prometheus_client's default registry (one server per process in production;
tests read deltas). The engine reports its batches through `BATCH_SIZE` and the queue through
`watch_queue`; the servicer reports everything else.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# seconds: from a few ms (a Get) to minutes (a DreamBooth personalize)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

RPC_LATENCY = Histogram(
    "e4t_rpc_duration_seconds", "Time from an RPC's arrival to its last message, by RPC and code",
    ["rpc", "code"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
STAGE_LATENCY = Histogram(
    "e4t_stage_duration_seconds",
    "Time spent in one stage of a request (personalize: wait, tune, save; generate: wait, generate)",
    ["rpc", "stage"], buckets=_LATENCY_BUCKETS,
)  # fmt: skip
ERRORS = Counter("e4t_rpc_errors_total", "RPCs that ended with a status other than OK", ["rpc", "code"])
IN_FLIGHT = Gauge("e4t_rpc_in_flight", "RPCs being served now", ["rpc"])
QUEUE_DEPTH = Gauge("e4t_queue_depth", "Requests waiting for the model worker")
BATCH_SIZE = Histogram(
    "e4t_batch_size", "Requests run together in one model batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
)
CONCEPT_CACHE = Counter("e4t_concept_cache_lookups_total", "Concept lookups in the in-memory cache", ["result"])
CONCEPT_CACHE_BYTES = Gauge("e4t_concept_cache_bytes", "Bytes of concept tensors held in the in-memory cache")
CONCEPTS_TUNED = Counter("e4t_concepts_tuned_total", "Concepts personalized and stored", ["method", "domain"])
RATE_LIMITED = Counter("e4t_rate_limited_total", "Requests refused by a tenant's rate or quota", ["reason"])
OPERATIONS = Gauge("e4t_operations", "Operations of this server not done yet, by state (queued, running)", ["state"])
OPERATIONS_DONE = Counter("e4t_operations_done_total", "Operations that ended, by state", ["state"])

_queues: weakref.WeakKeyDictionary[object, Callable[[], int]] = weakref.WeakKeyDictionary()
_queues_lock = threading.Lock()


def watch_queue(owner: object, depth: Callable[[], int]) -> None:
    """Counts `depth()` into `e4t_queue_depth` for as long as `owner` (an engine) lives."""
    with _queues_lock:
        _queues[owner] = depth


def _total_depth() -> float:
    with _queues_lock:
        return float(sum(depth() for depth in list(_queues.values())))


QUEUE_DEPTH.set_function(_total_depth)


def start_metrics_server(port: int, address: str = "0.0.0.0") -> int:
    """Serves /metrics on `port` (0: a free one) in a daemon thread; returns the port."""
    server, _ = start_http_server(port, addr=address)
    return server.server_port
