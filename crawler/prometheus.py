"""`--metrics-port`: Prometheus text format. Label sets are bounded: status class, error kind, outcome.

No per-URL or per-host labels, so the number of series does not grow with the crawl.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class PromMetrics:
    def __init__(self, port: int, addr: str = "0.0.0.0") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pages = Counter("crawl_pages_total", "Pages with a result record", ["status_class"], registry=r)
        self.bytes = Counter("crawl_bytes_total", "Body bytes received", registry=r)
        self.errors = Counter("crawl_errors_total", "Errors by kind (final and retried)", ["kind"], registry=r)
        self.outcomes = Counter("crawl_outcomes_total", "Non-done attempt outcomes", ["action"], registry=r)
        self.latency = Histogram(
            "crawl_fetch_seconds",
            "Fetch latency",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.inflight = Gauge("crawl_inflight", "Fetches in flight", registry=r)
        self.parse_backlog = Gauge("crawl_parse_backlog_bytes", "Bytes waiting for the parse pool", registry=r)
        self.loop_lag = Gauge("crawl_loop_lag_seconds", "Latest event-loop lag sample", registry=r)
        self.local_queue = Gauge("crawl_local_queue", "Leased URLs waiting for a fetch task", registry=r)
        self.held = Gauge("crawl_leases_held", "Leases this worker holds", registry=r)
        self.server, self.thread = start_http_server(port, addr=addr, registry=r)
        self.port = self.server.server_port

    def bind(self, engine: Any) -> None:
        """Gauges read live from the worker's engine (workers/engine.py) at scrape time."""
        self.inflight.set_function(lambda: engine.tasks.busy)
        self.parse_backlog.set_function(lambda: engine.parse_pool.backlog)
        self.local_queue.set_function(lambda: engine.leaser.queue.qsize())
        self.held.set_function(lambda: len(engine.leaser.book))

    def page(self, status_class: str, nbytes: int, latency_ms: float, error: str | None) -> None:
        self.pages.labels(status_class).inc()
        self.bytes.inc(nbytes)
        self.latency.observe(latency_ms / 1000)
        if error:
            self.errors.labels(error).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def outcome(self, action: str) -> None:
        self.outcomes.labels(action).inc()
