"""Unit tests of `crawler.metrics`: percentiles, the throughput windows, and how lines are rendered.

No processes, no Redis, no network: `WorkerMetrics` is fed events directly and its snapshots and lines are read back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawler.frontier import Counters
from crawler.metrics import RING, Window, WorkerMetrics, format_line, monitor_loop_lag, percentile
from crawler.prometheus import FRONTIER_STATES, PromMetrics

SNAPSHOT_KEYS = {
    "worker",
    "window_s",
    "pages",
    "pages_total",
    "pages_per_s",
    "pages_per_s_total",
    "mb_per_s",
    "status",
    "errors",
    "retries",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "inflight",
    "local_queue",
    "parse_backlog_bytes",
    "loop_lag_p99_ms",
    "rss_mb",
    "proxy_success_rate",
    "parse_wait_share",
}
SUMMARY_KEYS = {
    "event",
    "worker",
    "elapsed_s",
    "pages",
    "pages_per_s",
    "bytes",
    "status",
    "errors",
    "retries",
    "dead",
    "released",
    "loop_lag_p99_ms",
    "peak_rss_mb",
    "proxy_success_rate",
}


# ------------------------------------------------------------------------------------------------- percentile
def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None
    assert percentile([], 99) is None


def test_percentile_of_one_value_is_that_value_at_every_q() -> None:
    for q in (0, 1, 50, 95, 99, 100):
        assert percentile([7.5], q) == 7.5


def test_percentile_pinned_values() -> None:
    values = [float(v) for v in range(1, 102)]  # 1..101: index = round(q/100 * 100)
    assert percentile(values, 0) == 1
    assert percentile(values, 50) == 51  # the median of an odd count
    assert percentile(values, 95) == 96
    assert percentile(values, 99) == 100
    assert percentile(values, 100) == 101
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input is sorted first


def test_percentile_does_not_reorder_its_input() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    percentile(values, 90)
    assert values == [5.0, 1.0, 4.0, 2.0, 3.0]


def test_percentile_clamps_q_outside_0_100() -> None:
    values = [1.0, 2.0, 3.0]
    assert percentile(values, -10) == 1.0
    assert percentile(values, 250) == 3.0


@given(
    st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=100),
)
def test_percentile_is_a_member_between_min_and_max_and_monotone_in_q(
    values: list[float], q1: float, q2: float
) -> None:
    lo, hi = sorted((q1, q2))
    p_lo, p_hi = percentile(values, lo), percentile(values, hi)
    assert p_lo in values and p_hi in values
    assert min(values) <= p_lo <= p_hi <= max(values)
    assert percentile(values, 0) == min(values)
    assert percentile(values, 100) == max(values)


# ------------------------------------------------------------------------------------------- WorkerMetrics
def test_a_page_counts_in_the_totals_and_in_the_current_window() -> None:
    m = WorkerMetrics("w1")
    m.page(200, 1000, 12.0, None)
    m.page(404, 10, 3.0, None)
    m.page(503, 0, 0.0, "http_503")
    m.page(None, 0, 0.0, "robots_disallowed")
    m.page(0, 0, 0.0, None)  # no status at all: also "none"
    assert m.pages == 5 and m.window.pages == 5
    assert m.bytes == 1010 and m.window.bytes == 1010
    assert m.status == Counter({"2xx": 1, "4xx": 1, "5xx": 1, "none": 2})
    assert m.window.status == m.status
    assert m.errors == Counter({"http_503": 1, "robots_disallowed": 1})
    assert m.window.latencies_ms == [12.0, 3.0, 0.0, 0.0, 0.0]
    assert m.retries == 0


def test_a_retried_attempt_is_an_error_and_a_retry_but_not_a_page() -> None:
    m = WorkerMetrics("w1")
    m.attempt_error("timeout")
    m.attempt_error("timeout")
    m.attempt_error("connect")
    assert m.pages == 0 and m.window.pages == 0
    assert m.retries == 3 and m.window.retries == 3
    assert m.errors == Counter({"timeout": 2, "connect": 1}) == m.window.errors
    snap = m.snapshot()
    assert snap["retries"] == 3 and snap["errors"] == {"timeout": 2, "connect": 1} and snap["pages"] == 0


def test_snapshot_reports_the_window_then_starts_a_new_one() -> None:
    m = WorkerMetrics("w1")
    for _ in range(3):
        m.page(200, 100, 5.0, None)
    first = m.snapshot()
    assert set(first) == SNAPSHOT_KEYS
    assert first["worker"] == "w1"
    assert first["pages"] == 3 and first["pages_total"] == 3 and first["status"] == {"2xx": 3}
    assert m.window.pages == 0 and m.window.latencies_ms == [] and not m.window.status  # reset
    m.page(301, 0, 1.0, None)
    second = m.snapshot()
    assert second["pages"] == 1 and second["pages_total"] == 4 and second["status"] == {"3xx": 1}
    empty = m.snapshot()
    assert empty["pages"] == 0 and empty["pages_total"] == 4 and empty["status"] == {}
    assert empty["latency_p50_ms"] is None and empty["loop_lag_p99_ms"] is None


def test_snapshot_without_reset_keeps_the_window() -> None:
    m = WorkerMetrics("w1")
    m.page(200, 100, 5.0, None)
    peek = m.snapshot(reset=False)
    assert peek["pages"] == 1
    m.page(200, 100, 5.0, None)
    assert m.snapshot()["pages"] == 2


def test_windows_partition_the_pages_exactly() -> None:
    """However events and snapshots interleave, the windows' pages and statuses add up to the totals."""
    m = WorkerMetrics("w1")
    statuses = [200, 200, 404, None, 500, 200, 301] * 13
    windows = []
    for i, status in enumerate(statuses):
        m.page(status, i, float(i), None)
        if i % 9 == 4:
            windows.append(m.snapshot())
    windows.append(m.snapshot())
    running = 0
    for w in windows:
        running += w["pages"]
        assert w["pages_total"] == running
        assert sum(w["status"].values()) == w["pages"]
    assert running == len(statuses) == m.pages
    assert sum((Counter(w["status"]) for w in windows), Counter()) == m.status


def test_window_rates_use_the_window_span() -> None:
    m = WorkerMetrics("w1")
    now = time.monotonic()
    m.window.started = now - 2.0
    m.started = now - 4.0
    for _ in range(10):
        m.page(200, 500_000, 1.0, None)
    snap = m.snapshot()
    assert 2.0 <= snap["window_s"] < 3.0
    assert snap["pages_per_s"] == pytest.approx(10 / snap["window_s"], rel=0.02)
    assert snap["pages_per_s"] <= 5.0
    assert snap["pages_per_s_total"] <= 2.5  # 10 pages over >= 4 s since start
    assert snap["mb_per_s"] == pytest.approx(5.0 / snap["window_s"], rel=0.02)


def test_latency_percentiles_are_per_window() -> None:
    m = WorkerMetrics("w1")
    for ms in range(1, 101):
        m.page(200, 0, float(ms), None)
    snap = m.snapshot()
    assert snap["latency_p50_ms"] == pytest.approx(50.5, abs=1)
    assert snap["latency_p95_ms"] == pytest.approx(95, abs=1)
    assert snap["latency_p99_ms"] == pytest.approx(99, abs=1)
    m.page(200, 0, 1000.0, None)
    assert m.snapshot()["latency_p50_ms"] == 1000.0  # the earlier window does not leak in


def test_rings_are_bounded() -> None:
    m = WorkerMetrics("w1")
    for _ in range(RING + 50):
        m.page(200, 1, 1.0, None)
        m.lag(1.0)
    assert len(m.window.latencies_ms) == RING
    assert len(m.window.lags_ms) == RING
    assert m.pages == RING + 50  # counters are not bounded by the ring, only the samples


def test_loop_lag_window_and_whole_run() -> None:
    m = WorkerMetrics("w1")
    for _ in range(99):
        m.lag(1.0)
    m.lag(500.0)
    for _ in range(99):
        m.lag(1.0)
    first = m.snapshot()
    assert first["loop_lag_p99_ms"] is not None and first["loop_lag_p99_ms"] >= 1.0
    for _ in range(10):
        m.lag(2.0)
    assert m.snapshot()["loop_lag_p99_ms"] == 2.0  # a new window
    summary = m.summary()
    assert summary["loop_lag_p99_ms"] is not None and summary["loop_lag_p99_ms"] >= 1.0  # the whole run


def test_gauges_and_rss_appear_in_the_snapshot() -> None:
    m = WorkerMetrics("w1")
    m.inflight, m.local_queue, m.parse_backlog_bytes = 7, 3, 4096
    snap = m.snapshot(proxy_success=0.8766)
    assert (snap["inflight"], snap["local_queue"], snap["parse_backlog_bytes"]) == (7, 3, 4096)
    assert snap["proxy_success_rate"] == 0.877
    assert snap["rss_mb"] > 1
    assert m.peak_rss >= snap["rss_mb"] * 1e6 * 0.9


def test_parse_wait_share() -> None:
    m = WorkerMetrics("w1")
    assert m.snapshot(reset=False)["parse_wait_share"] is None  # no fetch time yet
    m.window.fetch_ms = 200.0
    m.window.parse_wait_ms = 50.0
    assert m.snapshot()["parse_wait_share"] == 0.25


def test_summary_covers_the_whole_run() -> None:
    m = WorkerMetrics("w1")
    m.page(200, 100, 5.0, None)
    m.snapshot()
    m.page(404, 50, 5.0, None)
    m.attempt_error("timeout")
    m.dead = 2
    m.released = 3
    s = m.summary(proxy_success=0.5)
    assert set(s) == SUMMARY_KEYS
    assert s["event"] == "summary" and s["worker"] == "w1"
    assert s["pages"] == 2 and s["bytes"] == 150
    assert s["status"] == {"2xx": 1, "4xx": 1}
    assert s["errors"] == {"timeout": 1} and s["retries"] == 1
    assert s["dead"] == 2 and s["released"] == 3
    assert s["proxy_success_rate"] == 0.5
    assert s["peak_rss_mb"] > 1


def test_summary_loop_lag_is_rounded_like_the_throughput_lines() -> None:
    m = WorkerMetrics("w1")
    m.lag(1 / 3)
    m.lag(2.999999999997269)
    s = m.summary()
    assert s["loop_lag_p99_ms"] == 3.0
    assert "lag_p99=3.0ms" in format_line(s, "text")


def test_prometheus_receives_every_event_once() -> None:
    prom = PromMetrics()  # the real registry, no listener
    m = WorkerMetrics("w1")
    m.prom = prom
    m.page(200, 10, 250.0, None)
    m.page(None, 0, 0.0, "robots_disallowed")
    m.attempt_error("timeout", "retry_now")
    m.attempt_error("http_503")
    m.release()
    m.lag(20.0)
    value = prom.registry.get_sample_value
    assert value("crawl_pages_total", {"status_class": "2xx"}) == 1
    assert value("crawl_pages_total", {"status_class": "none"}) == 1
    assert value("crawl_bytes_total") == 10
    assert value("crawl_fetch_seconds_count") == 2 and value("crawl_fetch_seconds_sum") == 0.25
    for kind in ("robots_disallowed", "timeout", "http_503"):
        assert value("crawl_errors_total", {"kind": kind}) == 1
    for action in ("retry_now", "retry_later", "release"):
        assert value("crawl_outcomes_total", {"action": action}) == 1
    assert value("crawl_outcomes_total", {"action": "dead"}) is None
    assert value("crawl_loop_lag_seconds") == 0.02


def test_a_dead_url_is_one_dead_outcome_whatever_the_pipeline_calls() -> None:
    """The processing stage makes these calls for a URL retried in process, then later, then decided dead; on
    the old main the worker also called prom.outcome(action), which counted every dead URL twice."""
    prom = PromMetrics()
    m = WorkerMetrics("w1")
    m.prom = prom
    for _ in range(3):  # exactly the calls workers/processing.py makes for one URL that ends dead
        m.attempt_error("http_503", "retry_now")
        m.attempt_error("http_503")
        m.dead_letter("http_503")
    assert prom.registry.get_sample_value("crawl_outcomes_total", {"action": "dead"}) == 3 == m.dead
    assert prom.registry.get_sample_value("crawl_errors_total", {"kind": "http_503"}) == 9


def test_crawl_counters_and_gateways_become_gauges() -> None:
    prom = PromMetrics(worker_id="w9", crawl_name="news")
    m = WorkerMetrics("w9")
    m.prom = prom
    m.set_crawl_counters(Counters(enqueued=10, queued=4, deferred=1, inflight=2, done=2, dead=1, retried=3))
    value = prom.registry.get_sample_value
    got = {st: value("crawl_frontier_urls", {"state": st}) for st in FRONTIER_STATES}
    assert got == {"enqueued": 10, "queued": 4, "deferred": 1, "inflight": 2, "done": 2, "dead": 1, "retried": 3}
    a, b = "http://u:***@gw-a:8000", "http://u:***@gw-b:8000"
    m.set_proxies([{"proxy": a, "health": 0.5, "state": "down"}, {"proxy": b, "health": 1.0}])
    assert (value("crawl_gateway_up", {"proxy": a}), value("crawl_gateway_health", {"proxy": a})) == (0, 0.5)
    assert value("crawl_gateway_up", {"proxy": b}) == 1
    m.set_proxies([{"proxy": b, "health": 0.9, "breaker": "open"}])  # gw-a left the configuration
    assert value("crawl_gateway_up", {"proxy": a}) is None
    assert (value("crawl_gateway_up", {"proxy": b}), value("crawl_gateway_health", {"proxy": b})) == (0, 0.9)
    assert value("crawl_worker_info", {"crawl": "news", "worker": "w9"}) == 1


def test_without_prometheus_the_new_hooks_do_nothing() -> None:
    m = WorkerMetrics("w")
    m.release()
    m.set_crawl_counters(Counters(0, 0, 0, 0, 0, 0, 0))
    m.set_proxies([])
    m.attempt_error("timeout", "retry_now")
    assert m.retries == 1


def test_window_defaults() -> None:
    before = time.monotonic()
    w = Window()
    assert before <= w.started <= time.monotonic()
    assert (w.pages, w.bytes, w.retries, w.parse_wait_ms, w.fetch_ms) == (0, 0, 0, 0.0, 0.0)
    assert not w.status and not w.errors and w.latencies_ms == [] and w.lags_ms == []
    assert Window().status is not w.status  # no shared mutable defaults


# ------------------------------------------------------------------------------------------------ format_line
def _busy_snapshot() -> dict[str, Any]:
    m = WorkerMetrics("vm-1")
    for status in (200, 200, 200, 404):
        m.page(status, 2048, 10.0, None)
    m.attempt_error("timeout")
    m.attempt_error("http_503")
    m.lag(4.0)
    m.inflight, m.local_queue, m.parse_backlog_bytes = 12, 5, 3 * 1024 + 100
    return m.snapshot(proxy_success=0.5)


def test_format_line_json_is_one_compact_sorted_object_with_the_event() -> None:
    snap = _busy_snapshot()
    line = format_line(snap, "json")
    assert "\n" not in line and ", " not in line and '": ' not in line
    obj = json.loads(line)
    assert obj == {"event": "throughput", **snap}
    assert list(obj) == sorted(obj)


def test_format_line_json_keeps_the_summary_event() -> None:
    m = WorkerMetrics("vm-1")
    m.page(200, 1, 1.0, None)
    obj = json.loads(format_line(m.summary(), "json"))
    assert obj["event"] == "summary" and obj["pages"] == 1


def test_format_line_text_throughput() -> None:
    line = format_line(_busy_snapshot(), "text")
    assert line.startswith("[vm-1] ")
    assert " pages/s (" in line and " avg) " in line and " MB/s | " in line
    assert "| 2xx=3 4xx=1 |" in line  # status classes sorted
    assert "err http_503=1 timeout=1 |" in line  # error kinds sorted
    assert "retries=2" in line
    assert "p50=10.0ms p95=10.0ms" in line
    assert "inflight=12 queue=5 parse=3KiB" in line
    assert "lag_p99=4.0ms" in line
    assert line.endswith(" proxy_ok=50%")


def test_format_line_text_without_proxies_or_errors() -> None:
    m = WorkerMetrics("w")
    m.page(200, 1, 1.0, None)
    line = format_line(m.snapshot(), "text")
    assert "| 2xx=1 | err - |" in line
    assert "proxy_ok" not in line


def test_format_line_text_of_an_idle_window_has_no_none() -> None:
    m = WorkerMetrics("idle")
    line = format_line(m.snapshot(), "text")
    assert "| - | err - |" in line
    assert "None" not in line
    assert "p50=- p95=-" in line and "lag_p99=-" in line


def test_format_line_text_summary() -> None:
    m = WorkerMetrics("vm-2")
    m.page(200, 10, 1.0, None)
    m.page(404, 10, 1.0, None)
    m.dead = 1
    line = format_line(m.summary(), "text")
    assert line.startswith("[vm-2] done: 2 pages in ")
    assert "| status 2xx=1 4xx=1 | errors - | retries=0 dead=1" in line
    assert "{" not in line and "'" not in line
    assert " peak_rss=" in line and line.endswith("MB")


# ------------------------------------------------------------------------------------------- monitor_loop_lag
def test_monitor_loop_lag_measures_a_blocked_loop() -> None:
    m = WorkerMetrics("w")

    async def scenario() -> None:
        sampled = asyncio.Event()
        record = m.lag

        def lag(ms: float) -> None:
            record(ms)
            sampled.set()

        m.lag = lag  # type: ignore[method-assign]
        task = asyncio.create_task(monitor_loop_lag(m, interval_s=0.01))
        await asyncio.sleep(0)  # let it start its first sleep
        end = time.monotonic() + 0.2
        while time.monotonic() < end:  # block the event loop for 200 ms (the stimulus, not a wait)
            pass
        await asyncio.wait_for(sampled.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert m.window.lags_ms, "no lag sample was recorded"
    assert m.window.lags_ms[0] >= 150  # the first wake-up came about 190 ms late
    assert all(v >= 0 for v in m.window.lags_ms)
