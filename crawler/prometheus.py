"""`--metrics-port`: the worker's Prometheus endpoint. Label sets are bounded: status class, error kind, outcome,
frontier state, and the configured gateways (a handful, redacted). No per-URL or per-host labels, so the number
of series does not grow with the crawl.

What is exported, and who feeds it:
- `crawl_pages_total`, `crawl_bytes_total`, `crawl_errors_total`, `crawl_outcomes_total`, `crawl_fetch_seconds`:
  counted by `crawler.metrics.WorkerMetrics` as events happen (the worker never calls these directly, so each
  event is counted exactly once).
- `crawl_inflight`, `crawl_parse_backlog_bytes`, `crawl_local_queue`, `crawl_leases_held`: read from the pipeline
  at scrape time (`bind`).
- `crawl_frontier_urls{state}`: crawl-wide counters from Redis, refreshed by the worker's heartbeat loop
  (`set_crawl_counters`). Every worker exports the same values: aggregate them with max(), not sum().
- `crawl_gateway_up{proxy}`, `crawl_gateway_health{proxy}`: per configured gateway (`set_proxies`).
- `process_*`: this process (prometheus_client's ProcessCollector), and `crawl_child_*`: its children, i.e. the
  parse pool (and an embedded Redis the worker started), whose CPU the process metrics would not show.

The listener binds `host` (default loopback: a worker's metrics are not for the whole network unless asked, e.g.
CRAWL_METRICS_HOST=0.0.0.0 inside a container so Prometheus on the compose network can scrape it).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from crawler.frontier import Counters

DEFAULT_HOST: Final = "127.0.0.1"
FRONTIER_STATES: Final = ("enqueued", "queued", "deferred", "inflight", "done", "dead", "retried")


class ChildProcessCollector(Collector):
    """CPU and memory of this process's children (the parse pool), which `process_*` does not include.

    CPU is a counter that must not go down when a pool process is replaced: it is the CPU of children already
    reaped (`os.times`, kept by the kernel) plus that of the live ones (psutil)."""

    def __init__(self, pid: int | None = None) -> None:
        self._proc = psutil.Process(pid or os.getpid())
        # Where the children come from. By default psutil lists them, which reads every /proc/<pid>/stat on the
        # machine (about 6 ms on a host with 100 processes, well under 1 ms in a container, once per scrape);
        # `use_pids` lets the worker name its pool processes instead.
        self._pids: Callable[[], Iterable[int]] | None = None

    def use_pids(self, pids: Callable[[], Iterable[int]]) -> None:
        """List the children to measure with `pids()` (e.g. the parse pool's) instead of scanning /proc."""
        self._pids = pids

    def _children(self) -> list[psutil.Process]:
        if self._pids is None:
            return list(self._proc.children(recursive=True))
        out = []
        for pid in self._pids():
            with contextlib.suppress(psutil.Error):
                out.append(psutil.Process(pid))
        return out

    def collect(self) -> Iterator[Metric]:
        reaped = os.times()
        cpu = reaped.children_user + reaped.children_system
        rss = 0
        live = 0
        for child in self._children():
            try:
                times = child.cpu_times()
                cpu += times.user + times.system
                rss += child.memory_info().rss
                live += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # exited between the listing and the read
        yield CounterMetricFamily(
            "crawl_child_cpu_seconds", "CPU (user+system) of the worker's child processes: the parse pool", cpu
        )
        yield GaugeMetricFamily("crawl_child_resident_memory_bytes", "RSS summed over the child processes", rss)
        yield GaugeMetricFamily("crawl_child_processes", "Live child processes (parse pool workers)", live)


class PromMetrics:
    """The worker's metrics registry, and (with a port) the HTTP listener that serves it.

    `PromMetrics()` without a port only builds the registry (for tests and for `render`); `start_metrics_server`
    is the usual way in."""

    def __init__(
        self,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        *,
        worker_id: str = "",
        crawl_name: str = "",
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pages = Counter("crawl_pages_total", "Pages with a result record", ["status_class"], registry=r)
        self.bytes = Counter("crawl_bytes_total", "Body bytes received", registry=r)
        self.errors = Counter("crawl_errors_total", "Errors by kind (final and retried)", ["kind"], registry=r)
        self.outcomes = Counter(
            "crawl_outcomes_total",
            "URL outcomes other than done: retry_now, retry_later, release, dead (each counted once)",
            ["action"],
            registry=r,
        )
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
        self.frontier = Gauge(
            "crawl_frontier_urls", "Crawl-wide URL counts from Redis (same on every worker)", ["state"], registry=r
        )
        self.gateway_up = Gauge("crawl_gateway_up", "1 if the gateway's breaker is closed", ["proxy"], registry=r)
        self.gateway_health = Gauge("crawl_gateway_health", "Gateway success score 0..1", ["proxy"], registry=r)
        self.saved_bytes = Gauge(
            "crawl_not_modified_saved_bytes", "Body bytes 304s saved (estimated from the mean 200)", registry=r
        )
        self.gateway_bytes = Gauge(
            "crawl_gateway_bytes", "Body bytes received through the gateway (what a plan bills)", ["proxy"], registry=r
        )
        self.info = Info("crawl_worker", "Which crawl this worker serves", registry=r)
        self.info.info({"crawl": crawl_name, "worker": worker_id})
        ProcessCollector(registry=r)
        self.children = ChildProcessCollector()
        r.register(self.children)
        self._gateways: set[str] = set()  # label values set so far, so a removed gateway's series can go
        self._lock = threading.Lock()  # set_proxies runs on the loop while a scrape may read from its thread
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self.host = host
        self.port: int | None = None
        if port is not None:
            self.serve(port, host)

    def __repr__(self) -> str:
        return f"PromMetrics(url={self.url})"

    # -- the listener ----------------------------------------------------------------------------------------
    def serve(self, port: int, host: str = DEFAULT_HOST) -> None:
        """Start the HTTP listener on host:port (port 0 picks a free one, read it back from `.port`)."""
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.host = host
        self.port = int(self.server.server_port)

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop the listener and free its port."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- live gauges -----------------------------------------------------------------------------------------
    def bind(self, engine: Any) -> None:
        """Gauges read live from the worker's engine (workers/engine.py) at scrape time."""
        self.inflight.set_function(lambda: engine.tasks.busy)
        self.parse_backlog.set_function(lambda: engine.parse_pool.backlog)
        self.local_queue.set_function(lambda: engine.leaser.queue.qsize())
        self.held.set_function(lambda: len(engine.leaser.book))
        pids = getattr(engine.parse_pool, "pids", None)  # a ParsePool that can name its processes
        if callable(pids):
            self.children.use_pids(pids)

    def set_crawl_counters(self, counters: Counters) -> None:
        """Crawl-wide counts from Redis (`Frontier.counters()`), refreshed from the heartbeat loop."""
        for state in FRONTIER_STATES:
            self.frontier.labels(state).set(getattr(counters, state))

    def set_proxies(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """The heartbeat's `proxies` entries: `proxy` (redacted URL), `health`, and `state` ("up"/"down").

        An entry without `state` (or `gateway`/`breaker`) counts as up: no breaker has opened for it."""
        with self._lock:
            seen: set[str] = set()
            for e in entries:
                name = str(e["proxy"])
                seen.add(name)
                state = e.get("state", e.get("gateway", e.get("breaker", "up")))
                self.gateway_up.labels(name).set(0 if state in ("down", "open") else 1)
                self.gateway_health.labels(name).set(float(e.get("health", 1.0)))
                self.gateway_bytes.labels(name).set(float(e.get("bytes", 0)))
            for gone in self._gateways - seen:
                self.gateway_up.remove(gone)
                self.gateway_health.remove(gone)
                self.gateway_bytes.remove(gone)
            self._gateways = seen

    # -- counters, called by WorkerMetrics only --------------------------------------------------------------
    def page(self, status_class: str, nbytes: int, latency_ms: float, error: str | None) -> None:
        self.pages.labels(status_class).inc()
        self.bytes.inc(nbytes)
        self.latency.observe(latency_ms / 1000)
        if error:
            self.errors.labels(error).inc()

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def count_outcome(self, action: str) -> None:
        self.outcomes.labels(action).inc()


def start_metrics_server(
    port: int, host: str = DEFAULT_HOST, *, worker_id: str = "", crawl_name: str = ""
) -> PromMetrics:
    """Build the registry and serve it on host:port; raises OSError if the address cannot be bound."""
    return PromMetrics(port, host, worker_id=worker_id, crawl_name=crawl_name)
