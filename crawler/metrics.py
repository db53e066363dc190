"""Worker metrics: counters, windows for the throughput line, latency and loop-lag percentiles.

Memory is bounded: latencies and lags are kept in fixed-size rings per window, errors by kind in a dict whose
keys are the small, fixed set of error kinds. Nothing here is per URL or per host.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil

from crawler.traffic import Traffic

RING = 4096  # samples kept per window for percentiles


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[idx]


@dataclass(slots=True)
class Window:
    """What happened since the last throughput line."""

    started: float = field(default_factory=time.monotonic)
    pages: int = 0
    bytes: int = 0
    retries: int = 0
    status: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    parse_wait_ms: float = 0.0
    fetch_ms: float = 0.0


class WorkerMetrics:
    """Counters of one worker process; `line()` renders the periodic throughput line."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.started = time.monotonic()
        # totals since start (also exported on /metrics)
        self.pages = 0
        self.bytes = 0
        self.retries = 0
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.dead = 0
        self.released = 0
        # the current window
        self.window = Window()
        self._all_lags_ms: list[float] = []  # whole-run ring, for the summary line
        # gauges set by the pipeline
        self.inflight = 0
        self.local_queue = 0
        self.parse_backlog_bytes = 0
        self._proc = psutil.Process(os.getpid())
        self.peak_rss = 0
        self.traffic = Traffic()  # bytes per gateway, 304s: added to the crawl's totals with each heartbeat
        self.prom: Any = None  # crawler.prometheus.PromMetrics when --metrics-port is set

    def restart_clock(self) -> None:
        """Rates count from when the worker is ready to fetch, not from process start (parse-pool start-up)."""
        self.started = time.monotonic()
        self.window.started = self.started

    def __repr__(self) -> str:
        return f"WorkerMetrics(pages={self.pages}, errors={sum(self.errors.values())}, inflight={self.inflight})"

    # -- events ---------------------------------------------------------------------------------------------
    def page(self, status: int | None, nbytes: int, latency_ms: float, error: str | None) -> None:
        w = self.window
        self.pages += 1
        w.pages += 1
        self.bytes += nbytes
        w.bytes += nbytes
        cls = f"{status // 100}xx" if status else "none"
        self.status[cls] += 1
        w.status[cls] += 1
        if error:
            self.errors[error] += 1
            w.errors[error] += 1
        if len(w.latencies_ms) < RING:
            w.latencies_ms.append(latency_ms)
        if self.prom is not None:
            self.prom.page(cls, nbytes, latency_ms, error)

    # Outcomes other than done are counted here and only here: one call per URL outcome, and this object forwards
    # it to Prometheus once. (The pipeline used to call prom.outcome() as well, counting each dead URL twice.)
    def dead_letter(self, kind: str) -> None:
        """A URL ended in the dead-letter set: an error, not a page (it has no record). Call once per dead URL."""
        self.dead += 1
        self.errors[kind] += 1
        self.window.errors[kind] += 1
        if self.prom is not None:
            self.prom.error(kind)
            self.prom.count_outcome("dead")

    def attempt_error(self, kind: str, action: str = "retry_later") -> None:
        """A failed attempt that will be retried (not a page yet): `action` is retry_now (in process, fresh proxy
        session) or retry_later (through the frontier's delayed set)."""
        self.retries += 1
        self.window.retries += 1
        self.errors[kind] += 1
        self.window.errors[kind] += 1
        if self.prom is not None:
            self.prom.error(kind)
            self.prom.count_outcome(action)

    def release(self) -> None:
        """A URL handed back to the frontier without spending an attempt (the gateway refused our credentials)."""
        if self.prom is not None:
            self.prom.count_outcome("release")

    def set_crawl_counters(self, counters: Any) -> None:
        """Crawl-wide counts from Redis (`Frontier.counters()`), for /metrics; call from the heartbeat loop."""
        if self.prom is not None:
            self.prom.set_crawl_counters(counters)

    def set_proxies(self, entries: list[dict[str, Any]]) -> None:
        """The heartbeat's per-gateway entries (proxy, health, state, bytes), for /metrics."""
        if self.prom is not None:
            self.prom.set_proxies(entries)
            self.prom.saved_bytes.set(self.traffic.saved_bytes)

    def lag(self, ms: float) -> None:
        if len(self.window.lags_ms) < RING:
            self.window.lags_ms.append(ms)
        if len(self._all_lags_ms) < 50 * RING:
            self._all_lags_ms.append(ms)
        if self.prom is not None:
            self.prom.loop_lag.set(ms / 1000)

    def rss_bytes(self) -> int:
        rss = int(self._proc.memory_info().rss)
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    # -- rendering ------------------------------------------------------------------------------------------
    def snapshot(self, proxy_success: float | None = None, reset: bool = True) -> dict[str, Any]:
        now = time.monotonic()
        w = self.window
        span = max(1e-6, now - w.started)
        total_span = max(1e-6, now - self.started)

        def r(x: float | None, nd: int = 1) -> float | None:
            return None if x is None else round(x, nd)

        snap: dict[str, Any] = {
            "worker": self.worker_id,
            "window_s": round(span, 2),
            "pages": w.pages,
            "pages_total": self.pages,
            "pages_per_s": round(w.pages / span, 2),
            "pages_per_s_total": round(self.pages / total_span, 2),
            "mb_per_s": round(w.bytes / span / 1e6, 3),
            "status": dict(w.status),
            "errors": dict(w.errors),
            "retries": w.retries,
            "latency_p50_ms": r(percentile(w.latencies_ms, 50)),
            "latency_p95_ms": r(percentile(w.latencies_ms, 95)),
            "latency_p99_ms": r(percentile(w.latencies_ms, 99)),
            "inflight": self.inflight,
            "local_queue": self.local_queue,
            "parse_backlog_bytes": self.parse_backlog_bytes,
            "loop_lag_p99_ms": r(percentile(w.lags_ms, 99)),
            "rss_mb": round(self.rss_bytes() / 1e6, 1),
            "proxy_success_rate": r(proxy_success, 3),
            "parse_wait_share": round(w.parse_wait_ms / w.fetch_ms, 3) if w.fetch_ms else None,
        }
        if reset:
            self.window = Window()
        return snap

    def summary(self, proxy_success: float | None = None) -> dict[str, Any]:
        span = max(1e-6, time.monotonic() - self.started)
        return {
            "event": "summary",
            "worker": self.worker_id,
            "elapsed_s": round(span, 2),
            "pages": self.pages,
            "pages_per_s": round(self.pages / span, 2),
            "bytes": self.bytes,
            "status": dict(self.status),
            "errors": dict(self.errors),
            "retries": self.retries,
            "dead": self.dead,
            "released": self.released,
            "loop_lag_p99_ms": _round(percentile(self._all_lags_ms, 99)),
            "peak_rss_mb": round(max(self.peak_rss, self.rss_bytes()) / 1e6, 1),
            "proxy_success_rate": proxy_success,
        }


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x}ms"


def _pairs(counts: dict[str, int]) -> str:
    """`2xx=3111 4xx=746`, sorted by key; `-` when there is nothing (never Python's dict syntax)."""
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def format_line(snap: dict[str, Any], fmt: str) -> str:
    """A throughput or summary line. JSON here is the legacy form without `ts`/`level`: the worker should print
    through `crawler.logs.EventLog`, which uses this function for its text lines."""
    if fmt == "json":
        return json.dumps({"event": "throughput", **snap}, separators=(",", ":"), sort_keys=True)
    if snap.get("event") == "summary":
        return (
            f"[{snap['worker']}] done: {snap['pages']} pages in {snap['elapsed_s']}s ({snap['pages_per_s']}/s) "
            f"| status {_pairs(snap['status'])} | errors {_pairs(snap['errors'])} | retries={snap['retries']} "
            f"dead={snap['dead']} lag_p99={_ms(snap['loop_lag_p99_ms'])} peak_rss={snap['peak_rss_mb']}MB"
        )
    st = _pairs(snap["status"])
    er = _pairs(snap["errors"])
    px = f" proxy_ok={snap['proxy_success_rate']:.0%}" if snap.get("proxy_success_rate") is not None else ""
    if snap.get("gateway_bytes"):
        px += f" via_gateways={sum(snap['gateway_bytes'].values()) / 1e6:.1f}MB"
    if snap.get("not_modified"):
        px += f" 304s={snap['not_modified']} saved~{snap.get('saved_bytes_estimate', 0) / 1e6:.1f}MB"
    if snap.get("gateways_down"):
        px += f" GATEWAYS_DOWN={snap['gateways_down']}"
    return (
        f"[{snap['worker']}] {snap['pages_per_s']:.1f} pages/s ({snap['pages_per_s_total']:.1f} avg) "
        f"{snap['mb_per_s']:.2f} MB/s | {st} | err {er} | retries={snap['retries']} "
        f"p50={_ms(snap['latency_p50_ms'])} p95={_ms(snap['latency_p95_ms'])} | inflight={snap['inflight']} "
        f"queue={snap['local_queue']} parse={snap['parse_backlog_bytes'] // 1024}KiB "
        f"lag_p99={_ms(snap['loop_lag_p99_ms'])} rss={snap['rss_mb']}MB{px}"
    )


async def monitor_loop_lag(metrics: WorkerMetrics, interval_s: float = 0.05) -> None:
    """Sleep `interval_s` over and over; how late each wake-up is, is how long the loop was blocked."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval_s)
        metrics.lag(max(0.0, (loop.time() - t0 - interval_s) * 1000))
