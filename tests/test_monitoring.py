"""Monitoring end to end: the worker's JSON log lines, `crawl stats`, `crawl workers`, `/metrics` and `crawl top`.

Everything runs for real: the `crawl` CLI in subprocesses, the session's real Redis (`redis_server`), the generated
site and the hostile server on 127.0.0.1. Waits are polls with deadlines (`wait_until`), never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families

from crawler.frontier import Counters
from crawler.keys import CrawlKeys
from crawler.metrics import WorkerMetrics
from crawler.prometheus import PromMetrics, start_metrics_server
from crawler.settings import Settings
from crawler.testing.services import RedisServer, RunningServer, free_port, start_server, wait_until
from tests.helpers import REPO_ROOT, CrawlRun, crawl, crawl_env, read_records, spawn_crawl, stats, worker_args

PAGES = 500
SEED = 23
STATS_KEYS = {"enqueued", "queued", "deferred", "inflight", "done", "dead", "retried", "pages_per_s", "eta_s"}
STATUS_CLASSES = {"1xx", "2xx", "3xx", "4xx", "5xx", "none"}
# every label name the exporter may use; anything else would be a new, possibly unbounded, dimension
# (state: frontier state; crawl/worker: the one info series; proxy: configured gateways, redacted)
PROM_LABELS = {"status_class", "kind", "action", "le", "state", "crawl", "worker", "proxy"}
LOG_IDENTITY = ("ts", "level", "event", "worker")
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


# ---------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def site() -> Iterator[RunningServer]:
    with start_server("crawler.testing.site_server", "--port", 0, "--pages", PAGES, "--seed", SEED) as s:
        yield s


@pytest.fixture(scope="module")
def hostile() -> Iterator[RunningServer]:
    with start_server("crawler.testing.hostile_server", "--port", 0) as h:
        yield h


def enqueue(redis: RedisServer, name: str, directory: Path, urls: list[str]) -> None:
    f = directory / f"seeds-{uuid.uuid4().hex[:6]}.txt"
    f.write_text("\n".join(urls) + "\n")
    run = crawl(["enqueue", str(f), "--redis", redis.url, "--crawl", name])
    assert run.returncode == 0, run.stderr


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


def live_workers(redis: RedisServer, name: str) -> list[dict[str, Any]]:
    run = crawl(["workers", "--json", "--redis", redis.url, "--crawl", name])
    assert run.returncode == 0, run.stderr
    rows: list[dict[str, Any]] = json.loads(run.stdout)
    return rows


def heartbeat_ids(redis: RedisServer, name: str) -> set[str]:
    """Ids of the workers whose heartbeat is live, read straight from Redis (cheap enough to poll)."""
    keys = CrawlKeys(name)
    with redis_lib.Redis.from_url(redis.url) as r:
        ids = [i.decode() for i in r.zrange(keys.workers, 0, -1)]
        return {i for i in ids if r.exists(keys.worker(i))}


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples | None:
    """GET /metrics and parse it: sample name -> [(labels, value)]; None while nothing listens yet."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:  # URLError, refused, reset: nothing (or no longer anything) listening
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def total(samples: Samples, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def bucket(samples: Samples, le: str) -> float:
    return next(v for labels, v in samples["crawl_fetch_seconds_bucket"] if labels["le"] == le)


def descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return list(psutil.Process(pid).children(recursive=True))
    return []


def reap(procs: list[psutil.Process], timeout_s: float = 10) -> list[int]:
    """Wait for processes our worker started to go; kill (by pid) any still alive. Returns the pids that lingered."""
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return [p.pid for p in alive]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker a failed test left running, and the parse processes it started (they would outlive it)."""
    if proc.poll() is None:
        kids = descendants(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
        reap(kids, timeout_s=0)


# --------------------------------------------------------------------------------- a finished crawl (tests 1, 2)
@dataclass
class FinishedCrawl:
    redis: RedisServer
    name: str
    run: CrawlRun
    records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def finished_crawl(
    redis_server: RedisServer, site: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> FinishedCrawl:
    """One real `--until-idle` crawl of the ~500-page site with JSON lines every 0.5 s (shared by two tests)."""
    directory = tmp_path_factory.mktemp("finished")
    name = "t" + uuid.uuid4().hex[:10]
    enqueue(redis_server, name, directory, [site.url + "/p/0"])
    out = directory / "out"
    run = crawl(worker_args(redis_server.url, name, out, "--until-idle", "--log-interval", "0.2"), timeout_s=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return FinishedCrawl(redis_server, name, run, read_records(out))


def test_json_log_lines_add_up_to_the_records(finished_crawl: FinishedCrawl) -> None:
    """The `--log-format json` lines of a real crawl agree with the records it wrote.

    Fields relied on (one JSON object per line, on stderr):

    * every line: ``event`` ("throughput", "summary" or "log") and ``worker``;
    * ``throughput`` (one per ``--log-interval``, covering the time since the previous one): ``pages`` (pages in
      this window), ``pages_total`` (pages since the worker started), ``status`` ({"2xx": n, ...} in this window),
      ``errors``, ``window_s``, ``pages_per_s`` (= pages / window_s), ``inflight``;
    * ``summary`` (one, at exit, covering the whole run): ``pages``, ``bytes``, ``status``, ``errors``, ``dead``,
      ``retries``, ``elapsed_s``, ``pages_per_s``.

    The windows partition the run, so the throughput lines' ``pages`` add up to each line's ``pages_total``. The
    pages of the last partial window (after the last throughput line, before exit) appear only in the summary, so
    sum(throughput pages) + that tail == summary pages == number of records.
    """
    run, records = finished_crawl.run, finished_crawl.records
    lines = run.json_lines()
    assert all("event" in obj and "worker" in obj for obj in lines), lines
    throughput = [obj for obj in lines if obj["event"] == "throughput"]
    summaries = [obj for obj in lines if obj["event"] == "summary"]
    assert len(summaries) == 1, summaries
    summary = summaries[0]
    assert len(records) > PAGES  # /p, /q and /missing pages: the crawl is big enough to span several windows
    assert len(throughput) >= 2, f"expected several 0.2 s windows, got {len(throughput)}"

    worker = summary["worker"]
    running = 0
    by_class: Counter[str] = Counter()
    for line in throughput:
        assert line["worker"] == worker
        running += line["pages"]
        assert line["pages_total"] == running, "a window lost or double-counted pages"
        assert sum(line["status"].values()) == line["pages"], line
        assert set(line["status"]) <= STATUS_CLASSES
        by_class.update(line["status"])
        assert line["window_s"] > 0
        assert line["pages_per_s"] == pytest.approx(line["pages"] / line["window_s"], rel=0.05, abs=0.5)
    tail = summary["pages"] - running
    assert 0 <= tail < summary["pages"], (running, summary["pages"])

    # the summary and the records agree exactly
    assert summary["pages"] == len(records)
    assert summary["status"] == dict(Counter(status_class(r["status"]) for r in records))
    assert summary["bytes"] == sum(r["bytes"] or 0 for r in records)
    assert summary["errors"] == dict(Counter(r["error"] for r in records if r["error"]))
    assert summary["dead"] == 0 and summary["retries"] == 0
    assert {r["worker"] for r in records} == {worker}
    # the windows' status counts are the summary's, minus the tail
    leftover = Counter(summary["status"])
    leftover.subtract(by_class)
    assert all(v >= 0 for v in leftover.values()) and sum(leftover.values()) == tail
    assert summary["pages_per_s"] == pytest.approx(summary["pages"] / summary["elapsed_s"], rel=0.05)


def test_stats_json_after_a_crawl_adds_up(finished_crawl: FinishedCrawl) -> None:
    records = finished_crawl.records
    s = stats(finished_crawl.redis.url, finished_crawl.name)
    assert set(s) >= STATS_KEYS, s
    assert s["enqueued"] == s["done"] + s["dead"] + s["queued"] + s["deferred"] + s["inflight"]
    assert s["consistent"] is True
    assert s["done"] == len(records) and s["dead"] == 0
    assert s["queued"] == s["deferred"] == s["inflight"] == 0
    assert s["retried"] == 0
    # the crawl took seconds and ended moments ago: the window has its pages (complete seconds only), averaged over
    # the crawl's own age rather than the whole 60 s window
    assert 0 < s["pages_per_s"] <= len(records)
    assert s["pages_per_s_10s"] >= s["pages_per_s"]
    assert s["eta_s"] is None  # nothing left to do
    assert s["workers"] == 0  # the worker removed its heartbeat on exit
    # the text form says the same
    text = crawl(["stats", "--redis", finished_crawl.redis.url, "--crawl", finished_crawl.name])
    assert text.returncode == 0, text.stderr
    assert f"enqueued={s['enqueued']} done={s['done']} dead=0 queued=0 deferred=0 inflight=0" in text.stdout


# -------------------------------------------------------------------------------------------------- workers
def test_workers_lists_live_workers_and_forgets_stopped_and_killed_ones(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path
) -> None:
    ttl = Settings().lifecycle.heartbeat_ttl_s  # no CLI flag sets it: a SIGKILLed worker is forgotten after the default
    ids = {"a", "b"}
    procs = {
        wid: spawn_crawl(
            worker_args(redis_server.url, crawl_name, tmp_path / wid, "--worker-id", wid, "--log-interval", "0.5"),
            log=tmp_path / f"{wid}.log",
        )
        for wid in sorted(ids)
    }
    children_a: list[psutil.Process] = []
    children_b: list[psutil.Process] = []
    try:
        wait_until(lambda: heartbeat_ids(redis_server, crawl_name) == ids, timeout_s=20, interval_s=0.05)
        rows = live_workers(redis_server, crawl_name)
        assert sorted(w["id"] for w in rows) == ["a", "b"], rows
        host = socket.gethostname()
        for w in rows:
            assert w["host"] == host
            assert w["pid"] == procs[w["id"]].pid
            assert isinstance(w["pages_per_s"], (int, float)) and w["pages_per_s"] == 0  # an empty frontier
            assert w["inflight"] == 0
            assert isinstance(w["rss_mb"], (int, float)) and 5 < w["rss_mb"] < 2000
        text = crawl(["workers", "--redis", redis_server.url, "--crawl", crawl_name])
        assert [ln.split("\t")[0] for ln in text.stdout.splitlines()] == ["a", "b"], text.stdout
        assert f"pid={procs['a'].pid}" in text.stdout and "rss_mb=" in text.stdout

        # SIGTERM: a clean exit removes the heartbeat at once
        children_a = descendants(procs["a"].pid)
        procs["a"].send_signal(signal.SIGTERM)
        assert procs["a"].wait(timeout=30) == 0, (tmp_path / "a.log").read_text()
        assert [w["id"] for w in live_workers(redis_server, crawl_name)] == ["b"]

        # SIGKILL: nothing is removed, the heartbeat expires within its TTL
        children_b = descendants(procs["b"].pid)
        procs["b"].send_signal(signal.SIGKILL)
        procs["b"].wait(timeout=10)
        killed = time.monotonic()
        wait_until(lambda: not heartbeat_ids(redis_server, crawl_name), timeout_s=ttl + 4, interval_s=0.1)
        assert time.monotonic() - killed <= ttl + 4
        assert live_workers(redis_server, crawl_name) == []
    finally:
        for p in procs.values():
            stop_process(p)
        reap(children_b, timeout_s=0)  # see test_sigkilled_worker_leaves_no_processes_behind
        lingering = reap(children_a, timeout_s=5)
    assert not lingering, f"the cleanly stopped worker left processes behind: {lingering}"


def test_sigkilled_worker_leaves_no_processes_behind(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path
) -> None:
    w = spawn_crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            tmp_path / "out",
            "--worker-id",
            "k",
            "--log-interval",
            "0.5",
            "--parse-workers",
            "2",
        ),
        log=tmp_path / "w.log",
    )
    children: list[psutil.Process] = []
    try:
        wait_until(lambda: live_workers(redis_server, crawl_name), timeout_s=20, interval_s=0.1)
        children = descendants(w.pid)
        assert len(children) >= 2, children  # the parse pool is up
        w.send_signal(signal.SIGKILL)
        w.wait(timeout=10)
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"processes outlived the SIGKILLed worker: {[p.pid for p in alive]}"
    finally:
        stop_process(w)
        reap(children, timeout_s=0)


# -------------------------------------------------------------------------------------------------- /metrics
def test_metrics_endpoint_during_and_after_a_crawl(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    n = 120
    urls = [f"{hostile.url}/slow/200?n={i}" for i in range(n)]  # 8 at a time (per-host limit): about 3 s
    enqueue(redis_server, crawl_name, tmp_path, urls)
    port = free_port()
    out = tmp_path / "out"
    w = spawn_crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            out,
            "--no-follow",
            "--no-robots",
            "--metrics-port",
            str(port),
            "--concurrency",
            "16",
            "--log-interval",
            "0.5",
        ),
        log=tmp_path / "w.log",
    )
    try:
        # during the crawl
        def counting() -> Samples | None:
            m = scrape(port)
            return m if m is not None and total(m, "crawl_pages_total") > 0 else None

        mid = wait_until(counting, timeout_s=30, interval_s=0.05)
        assert mid is not None
        for name in (
            "crawl_pages_total",
            "crawl_bytes_total",
            "crawl_fetch_seconds_bucket",
            "crawl_fetch_seconds_count",
            "crawl_fetch_seconds_sum",
            "crawl_inflight",
            "crawl_parse_backlog_bytes",
            "crawl_loop_lag_seconds",
        ):
            assert name in mid, f"{name} missing from /metrics: {sorted(mid)}"
        assert 0 < total(mid, "crawl_pages_total") < n, "scraped too late to see the crawl in progress"
        wait_until(lambda: (m := scrape(port)) is not None and total(m, "crawl_inflight") > 0, timeout_s=10)

        # `crawl stats` adds up at every moment of the crawl, not only at the end
        snapshots: list[dict[str, Any]] = []

        def finished() -> bool:
            s = stats(redis_server.url, crawl_name)
            snapshots.append(s)
            return bool(s["done"] == n)

        wait_until(finished, timeout_s=60, interval_s=0.1)
        for s in snapshots:
            assert s["enqueued"] == n == s["done"] + s["dead"] + s["queued"] + s["deferred"] + s["inflight"], s
            remaining = s["queued"] + s["deferred"] + s["inflight"]
            assert (s["eta_s"] is None) == (not remaining or s["pages_per_s"] == 0), s
        assert snapshots[0]["done"] < n

        # at the end: the counters equal the records
        end = scrape(port)
        assert end is not None
        records = read_records(out)
        assert len(records) == n and all(r["status"] == 200 for r in records)
        assert total(end, "crawl_pages_total") == n == len(records)
        assert {lb["status_class"] for lb, v in end["crawl_pages_total"] if v} == {"2xx"}
        assert total(end, "crawl_bytes_total") == sum(r["bytes"] for r in records)
        assert total(end, "crawl_fetch_seconds_count") == n
        assert bucket(end, "+Inf") == n
        assert bucket(end, "0.1") == 0, "a 200 ms fetch was observed under 0.1 s: wrong unit?"
        assert total(end, "crawl_fetch_seconds_sum") >= 0.2 * n * 0.95
        assert total(end, "crawl_inflight") == 0
        assert total(end, "crawl_parse_backlog_bytes") == 0
        assert total(end, "crawl_errors_total") == 0
        assert total(end, "crawl_loop_lag_seconds") >= 0

        # bounded label sets: no URL, host or path ever becomes a label value
        hostport = hostile.url.split("://", 1)[1]
        series = 0
        for scraped in (mid, end):
            for name, samples in scraped.items():
                for labels, _ in samples:
                    series += 1
                    assert set(labels) <= PROM_LABELS, (name, labels)
                    for value in labels.values():
                        assert "://" not in value and "/" not in value, (name, labels)
                        assert "127.0.0.1" not in value and hostport not in value, (name, labels)
                    if "status_class" in labels:
                        assert labels["status_class"] in STATUS_CLASSES, labels
        assert series < 200

        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=30) == 0, (tmp_path / "w.log").read_text()
        assert scrape(port) is None  # the exporter went away with the worker
    finally:
        stop_process(w)


def test_dead_letters_are_not_counted_as_pages(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    good = [f"{hostile.url}/slow/10?n={i}" for i in range(5)]
    doomed = f"{hostile.url}/flaky/503/100/{crawl_name}"  # 503 every time; --retries 0: dead at once
    enqueue(redis_server, crawl_name, tmp_path, [*good, doomed])
    port = free_port()
    out = tmp_path / "out"
    log = tmp_path / "w.log"
    w = spawn_crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            out,
            "--no-follow",
            "--no-robots",
            "--retries",
            "0",
            "--metrics-port",
            str(port),
        ),
        log=log,
    )
    try:
        wait_until(lambda: (s := stats(redis_server.url, crawl_name))["done"] + s["dead"] == 6, timeout_s=30)
        s = stats(redis_server.url, crawl_name)
        assert (s["done"], s["dead"]) == (5, 1)
        scraped = scrape(port)
        assert scraped is not None
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=30) == 0, log.read_text()
    finally:
        stop_process(w)
    records = read_records(out)
    assert len(records) == 5
    summary = CrawlRun(0, log.read_text(), "").summary()
    assert summary["dead"] == 1
    assert summary["pages"] == len(records), summary
    assert total(scraped, "crawl_pages_total") == len(records)
    # one dead URL is one dead outcome (main counted it twice: dead_letter and the pipeline's prom.outcome)
    dead = [v for labels, v in scraped["crawl_outcomes_total"] if labels["action"] == "dead"]
    assert dead == [1.0], scraped["crawl_outcomes_total"]


def test_every_json_log_line_has_ts_level_event_worker(finished_crawl: FinishedCrawl) -> None:
    """Not only throughput lines: start-up messages, warnings and the summary too, on stdout and stderr."""
    run = finished_crawl.run
    raw = [line for line in (run.stdout + "\n" + run.stderr).splitlines() if line.strip()]
    assert raw
    for line in raw:
        obj = json.loads(line)  # a plain-text line in JSON mode fails here
        assert tuple(obj)[:4] == LOG_IDENTITY, obj
        assert RFC3339_MS.match(obj["ts"]) and obj["level"] in ("debug", "info", "warning", "error"), obj


def test_a_start_up_error_in_json_mode_is_a_json_line(redis_server: RedisServer, tmp_path: Path) -> None:
    port_taken = socket.socket()
    port_taken.bind(("127.0.0.1", 0))
    port_taken.listen()
    try:
        args = worker_args(redis_server.url, "t" + uuid.uuid4().hex[:8], tmp_path / "out", "--until-idle")
        run = crawl([*args, "--metrics-port", str(port_taken.getsockname()[1])], timeout_s=60)
    finally:
        port_taken.close()
    assert run.returncode == 2
    objs = [json.loads(line) for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    errors = [o for o in objs if o["level"] == "error"]
    assert errors and "--metrics-port" in errors[-1]["message"], objs
    assert all(tuple(o)[:4] == LOG_IDENTITY for o in objs), objs


# ------------------------------------------------------------------------------------------ /metrics listener
def raw_metrics(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return str(resp.read().decode())


def reachable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def test_metrics_listener_binds_only_the_host_it_is_given() -> None:
    # 127.0.0.2 is loopback too on Linux, but a socket bound to 127.0.0.1 does not accept it: like a LAN address
    loopback = start_metrics_server(0, "127.0.0.1")
    everywhere = start_metrics_server(0, "0.0.0.0")
    default = PromMetrics(0)
    try:
        assert loopback.port and everywhere.port and default.port
        assert reachable("127.0.0.1", loopback.port) and not reachable("127.0.0.2", loopback.port)
        assert reachable("127.0.0.2", everywhere.port)
        assert default.host == "127.0.0.1" and not reachable("127.0.0.2", default.port)
        assert loopback.url == f"http://127.0.0.1:{loopback.port}/metrics"
        assert "crawl_pages_total" in raw_metrics(str(loopback.url))
    finally:
        for m in (loopback, everywhere, default):
            m.close()
    assert not reachable("127.0.0.1", loopback.port)


def test_metrics_have_process_and_parse_pool_cpu() -> None:
    m = start_metrics_server(0, "127.0.0.1", worker_id="w1", crawl_name="c1")
    child = subprocess.Popen(  # a stand-in for a parse-pool process: burns 0.3 s of CPU, then waits
        [
            sys.executable,
            "-c",
            "import sys,time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\n"
            "print('ready', flush=True)\nsys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        samples: Samples = {}
        for family in text_string_to_metric_families(raw_metrics(str(m.url))):
            for s in family.samples:
                samples.setdefault(s.name, []).append((dict(s.labels), s.value))
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
            assert total(samples, name) > 0, name
        assert total(samples, "crawl_child_processes") >= 1
        assert total(samples, "crawl_child_cpu_seconds_total") >= 0.25
        assert samples["crawl_worker_info"] == [({"crawl": "c1", "worker": "w1"}, 1.0)]
        # named children (the parse pool's pids) instead of a /proc scan: the same child, measured the same way
        m.children.use_pids(lambda: [child.pid, 2**22 + 7])  # a pid that does not exist is skipped
        named = {s.name: s.value for f in text_string_to_metric_families(raw_metrics(str(m.url))) for s in f.samples}
        assert named["crawl_child_processes"] == 1
        assert named["crawl_child_cpu_seconds_total"] >= 0.25
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
        m.close()


def test_metrics_pass_promtool_check() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    m = start_metrics_server(0, "127.0.0.1", worker_id="w1", crawl_name="c1")
    try:
        wm = WorkerMetrics("w1")
        wm.prom = m
        wm.page(200, 100, 12.0, None)
        wm.attempt_error("timeout", "retry_now")
        wm.dead_letter("http_503")
        wm.set_crawl_counters(Counters(3, 1, 0, 0, 1, 1, 1))
        wm.set_proxies([{"proxy": "http://u:***@gw:8000", "health": 1.0, "state": "up"}])
        text = raw_metrics(str(m.url))
    finally:
        m.close()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "crawl_frontier_urls" in text and "crawl_gateway_up" in text


# ------------------------------------------------------------------------------------------------------- top
class Pty:
    """`crawl top` on a pseudo-terminal of 40x120: read what it draws, type keys, wait for it to exit."""

    def __init__(self, args: list[str]) -> None:
        env = crawl_env({"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
        argv = [sys.executable, "-m", "crawler", *args]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: we exec at once
            pid, fd = pty.fork()
        if pid == 0:  # the child: become `crawl top`
            try:
                os.chdir(REPO_ROOT)
                os.execve(sys.executable, argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.output = b""
        self.returncode: int | None = None

    def _read(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout_s)
        if ready:
            try:
                self.output += os.read(self.fd, 65536)
            except OSError as exc:  # EIO: the child closed the terminal
                if exc.errno != errno.EIO:
                    raise

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait_for_output(self, text: str, timeout_s: float, times: int = 1) -> None:
        deadline = time.monotonic() + timeout_s
        while self.output.count(text.encode()) < times:
            if time.monotonic() > deadline or self.poll() is not None:
                raise AssertionError(f"{text!r} not drawn (exit={self.returncode}): {self.text()[-2000:]}")
            self._read(0.05)

    def wait_exit(self, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while self.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        for _ in range(20):  # what is left in the terminal
            before = len(self.output)
            self._read(0.01)
            if len(self.output) == before:
                break
        return self.returncode

    def lflag(self) -> int:
        return int(termios.tcgetattr(self.fd)[3])

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def top_crawl(redis_server: RedisServer, crawl_name: str, tmp_path: Path) -> str:
    enqueue(redis_server, crawl_name, tmp_path, [f"http://127.0.0.1:9/page/{i}" for i in range(3)])
    return crawl_name


def top_args(redis: RedisServer, name: str, *extra: str) -> list[str]:
    return ["top", "--redis", redis.url, "--crawl", name, *extra]


def test_top_draws_the_crawl_and_quits_on_q(redis_server: RedisServer, top_crawl: str) -> None:
    term = Pty(top_args(redis_server, top_crawl, "--interval", "0.2"))
    try:
        term.wait_for_output(f"crawl {top_crawl}", timeout_s=15)
        term.wait_for_output("gateways", timeout_s=5)  # the last table of the frame
        assert not term.lflag() & termios.ICANON, "top did not put the terminal in cbreak mode"
        for column in ("pages/s 10s", "queued", "deferred", "inflight", "eta", "workers", "rss MB"):
            assert column in term.text()
        os.write(term.fd, b"q")
        assert term.wait_exit(timeout_s=5) == 0, term.text()[-2000:]
        assert "Traceback" not in term.text()
        assert term.lflag() & termios.ICANON and term.lflag() & termios.ECHO, "terminal not restored"
    finally:
        term.close()


def test_top_ctrl_c_while_idle_exits_cleanly(redis_server: RedisServer, top_crawl: str) -> None:
    term = Pty(top_args(redis_server, top_crawl, "--interval", "2"))
    try:
        term.wait_for_output(f"crawl {top_crawl}", timeout_s=15)
        # a few auto-refreshes later: top is waiting for a key or its next refresh (its normal state)
        term.wait_for_output(f"crawl {top_crawl}", timeout_s=10, times=3)
        os.write(term.fd, b"\x03")  # Ctrl-C, through the terminal: SIGINT to top's process group
        code = term.wait_exit(timeout_s=5)
        assert code in (0, 130), term.text()[-2000:]
        assert "Traceback" not in term.text()
        assert term.lflag() & termios.ICANON and term.lflag() & termios.ECHO, "terminal not restored"
    finally:
        term.close()


def test_top_ctrl_c_as_soon_as_it_draws_exits(redis_server: RedisServer, top_crawl: str) -> None:
    term = Pty(top_args(redis_server, top_crawl, "--interval", "1"))
    try:
        term.wait_for_output(f"crawl {top_crawl}", timeout_s=15)
        os.write(term.fd, b"\x03")  # while top is busy fetching its next snapshot
        code = term.wait_exit(timeout_s=5)
        assert code in (0, 130), f"top still running 5 s after Ctrl-C: {term.text()[-500:]}"
        assert "Traceback" not in term.text()
    finally:
        term.close()


# ---------------------------------------------------------------------------------------- top, rendered
TOP_SNAPSHOT: dict[str, Any] = {
    "crawl": "news",
    "where": "redis://u:***@redis:6379/0",
    "enqueued": 10,
    "queued": 3,
    "deferred": 0,
    "inflight": 2,
    "done": 5,
    "dead": 0,
    "retried": 1,
    "pages_per_s": 1.25,
    "pages_per_s_10s": 2.0,
    "eta_s": None,
    "workers": 2,
}
TOP_WORKERS: list[dict[str, Any]] = [
    {  # an old or starting worker: fields missing or empty, as heartbeats can be
        "id": "host-with-a-long-name-123456",
        "pages_per_s": None,
        "inflight": 0,
        "parse_backlog": None,
        "rss_mb": 81.5,
        "proxy_success_rate": None,
        "errors": {},
        "proxies": [],
    },
    {
        "id": "w2-77",
        "pages_per_s": 12.5,
        "inflight": 4,
        "parse_backlog": 2048,
        "rss_mb": 90.0,
        "proxy_success_rate": 0.75,
        "errors": {"timeout": 3, "http_503": 1},
        "proxies": [
            {
                "proxy": "http://user:***@gw.example.com:8000",
                "health": 0.5,
                "requests": 9,
                "failures": 2,
                "rotations": 1,
                "state": "down",
            },
            {"proxy": "http://gw2.example.com:8000", "health": 1.0, "requests": 3, "failures": 0, "rotations": 0},
        ],
    },
]
TOP_HEADERS = (
    "pages/s",
    "inflight",
    "parse",
    "backlog",
    "rss",
    "proxy",
    "ok",
    "errors",
    "state",
    "health",
    "requests",
    "failures",
    "rotations",
    "deferred",
    "retried",
)


@pytest.mark.parametrize("width", [80, 120])
def test_top_renders_whole_headers_and_no_python_reprs(width: int) -> None:
    from rich.console import Console

    from crawler.views import render_top

    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(render_top(TOP_SNAPSHOT, TOP_WORKERS))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    words = set(re.findall(r"[\w/]+", text))
    for header in TOP_HEADERS:
        assert header in words, f"header {header!r} cut at {width} columns:\n{text}"
    assert "…" not in text and "None" not in text and "{}" not in text and "{'" not in text, text
    assert "down" in words, "the gateway breaker state is shown"
    assert "http_503=1" in text and "timeout=3" in text and "75%" in text
    assert "crawl news at redis://u:***@redis:6379/0" in text


def test_stats_says_where_it_looked(tmp_path: Path) -> None:
    from crawler.views import describe_crawl, format_snapshot

    embedded = Settings(crawl_name="news", home=tmp_path / ".crawl")
    assert describe_crawl(embedded) == f"crawl news at embedded Redis in {(tmp_path / '.crawl').resolve()}"
    remote = Settings(crawl_name="news", redis_url="redis://user:hunter22@db.internal:6380/1")
    assert describe_crawl(remote) == "crawl news at redis://user:***@db.internal:6380/1"
    empty = {**TOP_SNAPSHOT, "enqueued": 0, "done": 0, "queued": 0, "inflight": 0, "retried": 0}
    text = format_snapshot(empty, "redis://user:***@db.internal:6380/1")
    assert text.startswith("crawl news at redis://user:***@db.internal:6380/1: enqueued=0")
    assert "nothing was ever enqueued in crawl news there" in text
    assert "nothing was ever enqueued" not in format_snapshot(TOP_SNAPSHOT, "x")


def test_stats_from_another_directory_names_the_embedded_redis_it_used(tmp_path: Path) -> None:
    """`crawl stats` run elsewhere starts an empty embedded Redis there: it must say so, not just print zeros."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in crawl_env().items() if k not in ("CRAWL_REDIS_URL", "REDIS_URL", "CRAWL_HOME")}
    run = crawl(["stats"], env=env, cwd=elsewhere, timeout_s=60)
    assert run.returncode == 0, run.stderr
    assert f"embedded Redis in {(elsewhere / '.crawl').resolve()}" in run.stdout, run.stdout
    assert "nothing was ever enqueued" in run.stdout
