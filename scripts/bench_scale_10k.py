#!/usr/bin/env python3
"""Scale scenario: 10,000 requests in flight from one `crawl worker` against a server that answers after 1 s.

An aiohttp app on 127.0.0.1 (pre-forked, one SO_REUSEPORT socket per process, backlog = somaxconn, RLIMIT_NOFILE
raised to the hard limit) answers `/slow/<ms>/<i>` with a small HTML page after <ms> milliseconds. `--urls` such
URLs are enqueued in a separate redis-server, then one worker crawls them:

    crawl worker --until-idle --no-follow --concurrency 10000 --per-host-concurrency 0 --no-robots

(no proxy). By Little's law the ideal throughput is concurrency / latency = 10,000 pages/s; the report compares the
measured rate with that, says how many requests the server saw in flight at once, whether "Too many open files"
(EMFILE) appeared on either side, and what it cost (CPU of the worker tree + Redis, of the server, peak RSS).

    python scripts/bench_scale_10k.py [--urls 50000] [--concurrency 10000] [--latency-ms 1000]
                                      [--server-processes 2] [--out bench-out]

Writes bench-out/scale10k-<time>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit import ROOT
from benchkit.contenders import clean_env, crawl_log_metrics, found_urls_jsonl
from benchkit.measure import Measurement, measure, reap_strays
from benchkit.processes import Managed, become_subreaper, start_redis, wait_port
from benchkit.profile import PROFILE_RATE, PYSPY_MODE, PoolSpy, summarise_profile
from benchkit.report import code_identity, profile_markdown

from crawler.testing.services import free_port
from crawler.testing.serving import fork_workers

PAGE = (
    '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Slow {i}</title></head><body><h1>Slow page {i}</h1>'
    '<p>Answered after {ms} ms.</p><p><a href="/slow/{ms}/{n}">next</a></p></body></html>'
)


# ------------------------------------------------------------------------------------------------ the server


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def somaxconn() -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/core/somaxconn").read_text().strip())
    return 4096


async def serve_one(sock: socket.socket, index: int) -> None:
    from aiohttp import web

    inflight = peak = served = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal inflight, peak, served
        ms = int(request.match_info["ms"])
        i = int(request.match_info["i"])
        inflight += 1
        peak = max(peak, inflight)
        try:
            await asyncio.sleep(ms / 1000)
        finally:
            inflight -= 1
        served += 1
        return web.Response(body=PAGE.format(i=i, ms=ms, n=i + 1).encode(), content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_get("/slow/{ms:\\d+}/{i:\\d+}", slow)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=120, shutdown_timeout=2)
    await runner.setup()
    site = web.SockSite(runner, sock, backlog=somaxconn())
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parent = os.getppid()
    while not stop.is_set() and os.getppid() == parent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    print(
        json.dumps(
            {"event": "server_stats", "process": index, "pid": os.getpid(), "served": served, "peak_inflight": peak}
        ),
        flush=True,
    )
    await runner.cleanup()


def serve(port: int, processes: int) -> int:
    """Pre-fork: bind one SO_REUSEPORT socket per process first, so all are listening when READY is printed."""
    nofile = raise_nofile()
    socks = []
    for _ in range(processes):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(somaxconn())
        s.setblocking(False)
        socks.append(s)

    def serve_child(index: int) -> None:
        for other in socks:
            if other is not socks[index]:
                other.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        import uvloop

        uvloop.run(serve_one(socks[index], index))

    ready = f"READY http://127.0.0.1:{port} processes={processes} nofile={nofile} backlog={somaxconn()}"
    return fork_workers(processes, serve_child, ready, close_in_parent=socks)


def start_server(port: int, processes: int, workdir: Path) -> Managed:
    log = workdir / "server.log"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "serve", "--port", str(port), "--processes", str(processes)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=open(log, "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    wait_port(port)
    return Managed("origin", proc, port, {"impl": f"aiohttp, {processes} processes", "log": str(log)})


# ------------------------------------------------------------------------------------------------ the scenario


def count_emfile(text: str) -> int:
    return sum(text.count(s) for s in ("Too many open files", "EMFILE"))


@dataclass(frozen=True)
class Scenario:
    """What one scenario run left behind, for the report."""

    measurement: Measurement
    enqueue_s: float
    stats_stdout: str
    worker_log: str
    server_log: str
    records: list[str]
    statuses: Counter[int]
    crawl: dict[str, Any]
    server_impl: str
    profile_files: list[tuple[str, Path]]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urls", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=10_000)
    ap.add_argument("--latency-ms", type=int, default=1000)
    ap.add_argument("--server-processes", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--worker-args", default="", help="extra `crawl worker` flags, e.g. '--parse-workers 2'")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="run the worker under py-spy (slower; for finding hot spots, not for the figures)",
    )
    ap.add_argument("--keep-workdir", action="store_true")
    return ap.parse_args(argv)


def worker_command(args: argparse.Namespace, redis_url: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "crawler",
        "worker",
        "--redis",
        redis_url,
        "--until-idle",
        "--no-follow",
        "--concurrency",
        str(args.concurrency),
        "--per-host-concurrency",
        "0",
        "--no-robots",
        "--output",
        str(out),
        "--log-format",
        "json",
        "--log-interval",
        "1",
        *args.worker_args.split(),
    ]


def under_pyspy(args: argparse.Namespace, cmd: list[str], stamp: str) -> tuple[list[str], PoolSpy, Path]:
    """The worker command under `py-spy record`, a PoolSpy for its parse processes, and the raw profile path."""
    pyspy = shutil.which("py-spy")
    if not pyspy:
        raise SystemExit("py-spy not installed")
    raw = args.out / f"scale10k-profile-{stamp}-worker.txt"
    record = [pyspy, "record", "--format", "raw", "--rate", str(PROFILE_RATE), *PYSPY_MODE, "-o", str(raw), "--"]
    return [*record, *cmd], PoolSpy(pyspy, args.out / f"scale10k-profile-{stamp}", PROFILE_RATE), raw


def crawl_cli(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawler", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def run_scenario(args: argparse.Namespace, workdir: Path, stamp: str) -> Scenario:
    """Start the origin and Redis, enqueue, run one worker (measured), read `crawl stats`; stop all by PID."""
    servers: list[Managed] = []
    redis: Managed | None = None
    try:
        port = free_port()
        server = start_server(port, args.server_processes, workdir)
        servers.append(server)
        redis = start_redis(workdir, "redis")
        keep = server.pids() | {redis.proc.pid}
        env = clean_env()
        urls = workdir / "urls.txt"
        urls.write_text("".join(f"http://127.0.0.1:{port}/slow/{args.latency_ms}/{i}\n" for i in range(args.urls)))
        t0 = time.monotonic()
        enq = crawl_cli(["enqueue", str(urls), "--redis", redis.info["url"]], env, 300)
        enqueue_s = time.monotonic() - t0
        print(f"enqueued {args.urls} URLs in {enqueue_s:.1f}s: {enq.stdout.strip()}", flush=True)
        out = workdir / "out"
        cmd = worker_command(args, redis.info["url"], out)
        print("$ crawl " + " ".join(cmd[3:]), flush=True)
        pool_spy, raw = None, None
        if args.profile:
            cmd, pool_spy, raw = under_pyspy(args, cmd, stamp)
            pool_spy.start()
        try:
            m = measure(cmd, env, workdir / "worker.log", args.timeout_s, keep, [server], redis)
        finally:
            pool_files = pool_spy.finish() if pool_spy else []
        stats = crawl_cli(["stats", "--json", "--redis", redis.info["url"]], env, 60)
    finally:
        if redis is not None:
            redis.stop()
        for s in servers:
            s.stop()
        reap_strays(set(), 10)
    records, statuses = found_urls_jsonl(sorted(out.glob("*.jsonl")))
    profile_files: list[tuple[str, Path]] = []
    if raw is not None and raw.exists():
        profile_files = [("worker process (event loop)", raw)] + [("parse pool process", f) for f in pool_files]
    return Scenario(
        measurement=m,
        enqueue_s=enqueue_s,
        stats_stdout=stats.stdout,
        worker_log=(workdir / "worker.log").read_text(errors="replace"),
        server_log=(workdir / "server.log").read_text(errors="replace"),
        records=records,
        statuses=statuses,
        crawl=crawl_log_metrics(workdir / "worker.log"),
        server_impl=str(server.info["impl"]),
        profile_files=profile_files,
    )


def throughput_windows(worker_log: str) -> list[dict[str, Any]]:
    windows = []
    for line in worker_log.splitlines():
        if line.startswith('{"') and '"event":"throughput"' in line:
            with contextlib.suppress(ValueError):
                windows.append(json.loads(line))
    return windows


def build_result(args: argparse.Namespace, sc: Scenario, argv: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: rates against Little's law, in-flight counts, EMFILE counts, CPU and memory."""
    m, crawl = sc.measurement, sc.crawl
    pages = len(set(sc.records))
    windows = throughput_windows(sc.worker_log)
    server_stats = [json.loads(x) for x in sc.server_log.splitlines() if x.startswith('{"event": "server_stats"')]
    rates = sorted(w["pages_per_s"] for w in windows)
    ideal = args.concurrency / (args.latency_ms / 1000)
    cpu = m.cpu_tree_s + m.cpu_redis_s
    elapsed = crawl.get("worker_elapsed_s")
    result: dict[str, Any] = {
        "urls": args.urls,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "ideal_pages_per_s": ideal,
        "pages_done": pages,
        "statuses": {str(k): v for k, v in sc.statuses.items()},
        "complete": pages == args.urls and set(sc.statuses) == {200},
        "wall_s": round(m.wall_s, 2),
        "worker_elapsed_s": elapsed,
        "pages_per_s": round(pages / m.wall_s, 1) if m.wall_s else 0,
        "pages_per_s_worker": round(pages / elapsed, 1) if elapsed else None,
        "best_1s_window_pages_per_s": rates[-1] if rates else None,
        "median_1s_window_pages_per_s": rates[len(rates) // 2] if rates else None,
        "efficiency_sustained_pct": round(100 * pages / elapsed / ideal, 1) if elapsed else None,
        "efficiency_best_window_pct": round(100 * (rates[-1] if rates else 0) / ideal, 1),
        # Little's law backwards: requests actually at the server on average = throughput x server latency
        "mean_at_server": round(pages / elapsed * args.latency_ms / 1000) if elapsed else None,
        "peak_inflight_reported": max((w.get("inflight", 0) for w in windows), default=0),
        "server_peak_inflight_sum": sum(s["peak_inflight"] for s in server_stats),
        "server_served": sum(s["served"] for s in server_stats),
        "latency_p50_ms_windows": [w.get("latency_p50_ms") for w in windows],
        "latency_p95_ms_max": max((w.get("latency_p95_ms") or 0 for w in windows), default=None),
        "loop_lag_p99_ms": crawl.get("loop_lag_p99_ms"),
        "loop_lag_p99_ms_worst_window": crawl.get("loop_lag_p99_ms_worst_window"),
        "errors": crawl.get("errors"),
        "emfile_worker": count_emfile(sc.worker_log),
        "emfile_server": count_emfile(sc.server_log),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_page": round(cpu * 1000 / pages, 3) if pages else None,
        "cpu_redis_s": round(m.cpu_redis_s, 2),
        "server_cpu_s": m.servers_cpu_s.get("origin"),
        "peak_rss_main_mb": round(m.peak_rss_main_mb, 1),
        "peak_rss_tree_mb": round(m.peak_rss_tree_mb, 1),
        "peak_rss_redis_mb": round(m.peak_rss_redis_mb, 1),
        "foreign_cores": round(m.foreign_cpu_s / m.wall_s, 2) if m.wall_s else 0,
        "exit_code": m.exit_code,
        "timed_out": m.timed_out,
        "enqueue_s": round(sc.enqueue_s, 1),
        "server_processes": args.server_processes,
        "worker_args": args.worker_args,
        "server_stats": server_stats,
        "frontier_stats": json.loads(sc.stats_stdout) if sc.stats_stdout.strip().startswith("{") else sc.stats_stdout,
        "summary": crawl.get("summary"),
        "windows": windows,
        **meta,
        "command": "python scripts/bench_scale_10k.py " + " ".join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
        "somaxconn": somaxconn(),
    }
    if sc.profile_files:
        prof = summarise_profile(sc.profile_files)
        prof.update(
            raw=[str(f) for _, f in sc.profile_files],
            pages=pages,
            wall_s_under_profiler=round(m.wall_s, 2),
            cpu_s_under_profiler=round(cpu, 2),
        )
        result["profile"] = prof
    return result


def markdown_table(r: dict[str, Any], server_impl: str) -> str:
    table = "\n".join(
        [
            f"{r['urls']} URLs at /slow/{r['latency_ms']}, `--concurrency {r['concurrency']}`, server: "
            f"{server_impl} (peak {r['server_peak_inflight_sum']} requests in flight at the server); "
            f"ideal (Little's law) {r['ideal_pages_per_s']:.0f} pages/s.",
            "",
            "| pages done | wall s | pages/s (wall) | pages/s (worker) | best 1 s window | median 1 s window "
            "| vs ideal (sustained / best window) | tasks in flight (worker) | mean requests at the server "
            "| latency p95 max ms | EMFILE (worker/server) | errors | CPU s (tree+Redis) "
            "| CPU-ms/page | server CPU s | peak RSS main MB | loop lag p99 ms | foreign load |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {r['pages_done']}/{r['urls']} | {r['wall_s']} | {r['pages_per_s']} | {r['pages_per_s_worker']} "
            f"| {r['best_1s_window_pages_per_s']} | {r['median_1s_window_pages_per_s']} "
            f"| {r['efficiency_sustained_pct']}% / {r['efficiency_best_window_pct']}% "
            f"| {r['peak_inflight_reported']} | {r['mean_at_server']} (peak {r['server_peak_inflight_sum']}) "
            f"| {r['latency_p95_ms_max']} | {r['emfile_worker']}/{r['emfile_server']} "
            f"| {r['errors']} | {r['cpu_s']} | {r['cpu_ms_per_page']} | {r['server_cpu_s']} | {r['peak_rss_main_mb']} "
            f"| {r['loop_lag_p99_ms']} | {r['foreign_cores']} |",
        ]
    )
    if r.get("profile"):
        table += "\n\n" + profile_markdown(r["profile"])
    return table


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        sp = argparse.ArgumentParser()
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--processes", type=int, default=2)
        a = sp.parse_args(argv[1:])
        return serve(a.port, a.processes)
    args = parse_args(argv)

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    subreaper = become_subreaper()
    meta = {"code": code_identity(), "subreaper": subreaper}
    workdir = Path(tempfile.mkdtemp(prefix="crawl-bench-scale10k-"))
    scenario = run_scenario(args, workdir, stamp)
    result = build_result(args, scenario, argv, meta)
    path = args.out / f"scale10k-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    (args.out / "scale10k-latest.json").write_text(json.dumps(result, indent=1, default=str))
    table = markdown_table(result, scenario.server_impl)
    (args.out / f"scale10k-{stamp}.md").write_text(table + "\n")
    print("\n" + table + f"\n\nJSON: {path}", flush=True)
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
