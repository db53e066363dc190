#!/usr/bin/env python3
"""Per-host throughput of one polite host: does `crawl` keep its `--per-host-concurrency` slots busy?

Issue 12: with the default 8 slots a host answering in 50 ms was crawled at 70 pages/s where 8 slots allow 160,
because each URL held its host slot through the group commit and the next lease round trip. Goal: pages/s at
least 0.8 x slots / mean fetch time.

What it does, for each `--delays-ms` case (2 and 50 by default):

1. Starts `benchkit.delay_server` on 127.0.0.1 (one aiohttp process): `--pages` URLs on that one host, each
   answered after the fixed delay, with `--links` links to other URLs of the set (all seeded: they only exercise
   dedup). The server counts its own in-flight requests, so the table shows how many slots were really busy
   (`server mean in flight`, ideally close to the slots) and its handling time (close to the delay unless the
   server is saturated; its CPU is shown too).
2. Runs `--runs` crawls, each on a fresh private redis-server (in memory): `crawl enqueue` + `crawl worker
   --until-idle` (`--mode worker`) or `crawl run --redis` (`--mode run`), with `--per-host-concurrency` (default 8,
   the crawler's default) and everything else at the defaults (robots on: the host's robots.txt is a quick 404).
3. Reads the records: pages (status 200), mean `elapsed_ms` (the fetch time the crawler saw), and the steady
   rate over the records' span (first fetch start to last record), beside the wall-clock rate of the whole
   process (which includes start-up and idle detection). The ratio is pages/s over `slots / mean fetch time`.

CPU of every process a run starts (worker, its parse pool, the Redis) is counted as in scripts/bench.py (this
process is a child subreaper; getrusage of children plus the Redis's psutil delta). Prints a Markdown table of
medians, or with `--json` the whole document on stdout (progress always goes to stderr).

Quick look: `python scripts/bench_per_host.py --pages 300 --runs 1`; full: `python scripts/bench_per_host.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import ROOT
from benchkit.contenders import clean_env
from benchkit.measure import Measurement, measure, reap_strays
from benchkit.processes import Managed, become_subreaper, start_redis
from benchkit.report import code_identity

from crawler.testing.services import RunningServer, fetch_json, start_server

GOAL = 0.8
SCRIPTS = ROOT / "scripts"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--delays-ms", default="2,50", help="comma-separated answer delays of the host, in ms")
    ap.add_argument("--pages", type=int, default=3000, help="URLs on the host (all seeded)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slots", type=int, default=8, help="--per-host-concurrency (8 is the crawler's default)")
    ap.add_argument("--concurrency", type=int, default=0, help="--concurrency of the worker (0: its default)")
    ap.add_argument("--mode", choices=("worker", "run"), default="worker")
    ap.add_argument("--links", type=int, default=3, help="links per page, to other URLs of the set")
    ap.add_argument("--page-kb", type=int, default=8)
    ap.add_argument("--timeout-s", type=float, default=0, help="per run; 0: 60 s + 3 x pages x delay")
    ap.add_argument("--budget-s", type=float, default=900, help="start no new run after this many seconds")
    ap.add_argument("--crawl-src", type=Path, default=ROOT, help="source tree whose crawler/ + workers/ run")
    ap.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    ap.add_argument("--keep-workdir", action="store_true", help="keep the records, logs and Redis dirs of each run")
    args = ap.parse_args(argv)
    args.delays = [float(d) for d in args.delays_ms.split(",") if d.strip()]
    if args.pages < 1 or args.runs < 1 or args.slots < 1 or not args.delays:
        ap.error("--pages, --runs, --slots must be >= 1 and --delays-ms not empty")
    args.crawl_src = args.crawl_src.resolve()
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_host(args: argparse.Namespace, delay_ms: float) -> RunningServer:
    env = {"PYTHONPATH": os.pathsep.join([str(SCRIPTS), str(args.crawl_src), os.environ.get("PYTHONPATH", "")])}
    return start_server(
        "benchkit.delay_server",
        "--delay-ms",
        delay_ms,
        "--pages",
        args.pages,
        "--links",
        args.links,
        "--page-kb",
        args.page_kb,
        env=env,
    )


def crawl_cmd(args: argparse.Namespace, redis_url: str, seeds: Path, out: Path) -> list[str]:
    common = ["--redis", redis_url, "--output", str(out), "--per-host-concurrency", str(args.slots)]
    common += ["--log-format", "json", "--log-interval", "1"]
    if args.concurrency:
        common += ["--concurrency", str(args.concurrency)]
    if args.mode == "run":
        return [sys.executable, "-m", "crawler", "run", str(seeds), *common]
    return [sys.executable, "-m", "crawler", "worker", "--until-idle", *common]


def read_records(out: Path) -> dict[str, Any]:
    """Pages, the mean fetch time the crawler recorded, and the span from the first fetch start to the last record."""
    urls: set[str] = set()
    elapsed: list[float] = []
    starts: list[float] = []
    ends: list[float] = []
    records = 0
    for path in sorted(out.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                records += 1
                if rec.get("status") == 200:
                    urls.add(rec["url"])
                if rec.get("elapsed_ms") is not None and rec.get("fetched_at") is not None:
                    elapsed.append(float(rec["elapsed_ms"]))
                    ends.append(float(rec["fetched_at"]))
                    starts.append(float(rec["fetched_at"]) - float(rec["elapsed_ms"]) / 1000)
    span = (max(ends) - min(starts)) if ends else 0.0
    return {
        "pages": len(urls),
        "records": records,
        "mean_fetch_ms": round(statistics.fmean(elapsed), 3) if elapsed else None,
        "p50_fetch_ms": statistics.median(elapsed) if elapsed else None,
        "span_s": round(span, 3),
    }


def one_run(args: argparse.Namespace, host: RunningServer, delay_ms: float, run_dir: Path) -> dict[str, Any]:
    """One crawl of the host on a fresh Redis; the row of the table (before the medians)."""
    run_dir.mkdir(parents=True)
    redis = start_redis(run_dir, "redis")
    origin = Managed("origin", host.proc, int(host.url.rsplit(":", 1)[1]), {"impl": "benchkit.delay_server"})
    keep = {host.pid, redis.proc.pid}
    seeds = run_dir / "seeds.txt"
    seeds.write_text("".join(f"{host.url}/u/{i}\n" for i in range(args.pages)))
    out = run_dir / "out"
    env = clean_env(args.crawl_src)
    timeout_s = args.timeout_s or 60 + 3 * args.pages * delay_ms / 1000
    try:
        if args.mode == "worker":
            enqueue = [sys.executable, "-m", "crawler", "enqueue", str(seeds), "--redis", redis.info["url"]]
            m0 = measure(enqueue, env, run_dir / "enqueue.txt", 120, keep, [], cwd=args.crawl_src)
            if m0.exit_code != 0:
                raise SystemExit(f"crawl enqueue failed: see {run_dir / 'enqueue.txt'}")
        fetch_json(f"{host.url}/__stats?reset=1")
        cmd = crawl_cmd(args, redis.info["url"], seeds, out)
        m = measure(cmd, env, run_dir / "log.txt", timeout_s, keep, [origin], redis, cwd=args.crawl_src)
        server = fetch_json(f"{host.url}/__stats?reset=1")
    finally:
        redis.stop()
    rec = read_records(out)
    return score(args, delay_ms, m, rec, server, run_dir)


def score(
    args: argparse.Namespace,
    delay_ms: float,
    m: Measurement,
    rec: dict[str, Any],
    server: dict[str, Any],
    run_dir: Path,
) -> dict[str, Any]:
    """The row: pages/s (steady and wall), the fetch time the records show, and the ratio to the slots' capacity."""
    pages = rec["pages"]
    capacity = args.slots * 1000 / rec["mean_fetch_ms"] if rec["mean_fetch_ms"] else None
    wall_pps = pages / m.wall_s if m.wall_s else 0.0
    steady_pps = pages / rec["span_s"] if rec["span_s"] else 0.0
    cpu = m.cpu_tree_s + m.cpu_redis_s
    return {
        "delay_ms": delay_ms,
        "pages": pages,
        "pages_expected": args.pages,
        "complete": pages == args.pages,
        "records": rec["records"],
        "wall_s": round(m.wall_s, 2),
        "span_s": rec["span_s"],
        "pages_per_s_wall": round(wall_pps, 1),
        "pages_per_s_steady": round(steady_pps, 1),
        "mean_fetch_ms": rec["mean_fetch_ms"],
        "p50_fetch_ms": rec["p50_fetch_ms"],
        "capacity_pages_per_s": round(capacity, 1) if capacity else None,
        "ratio_steady": round(steady_pps / capacity, 3) if capacity else None,
        "ratio_wall": round(wall_pps / capacity, 3) if capacity else None,
        "server": server,
        "server_cpu_cores": round(m.servers_cpu_s.get("origin", 0.0) / m.wall_s, 2) if m.wall_s else None,
        "cpu_s": round(cpu, 2),
        "cpu_redis_s": round(m.cpu_redis_s, 2),
        "cpu_ms_per_page": round(cpu * 1000 / pages, 3) if pages else None,
        "foreign_cores": round(m.foreign_cpu_s / m.wall_s, 2) if m.wall_s else None,
        "loadavg_before": round(m.loadavg_before, 2),
        "exit_code": m.exit_code,
        "timed_out": m.timed_out,
        "log": str(run_dir / "log.txt"),
    }


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str, source: str | None = None) -> float | None:
        vals = [(r[source] if source else r).get(key) for r in rows]
        nums = [float(v) for v in vals if v is not None]
        return round(statistics.median(nums), 3) if nums else None

    keys = ("pages_per_s_wall", "pages_per_s_steady", "mean_fetch_ms", "capacity_pages_per_s", "ratio_steady")
    out: dict[str, Any] = {k: med(k) for k in keys}
    out |= {k: med(k) for k in ("ratio_wall", "server_cpu_cores", "cpu_ms_per_page", "wall_s", "foreign_cores")}
    out |= {f"server_{k}": med(k, "server") for k in ("mean_in_flight", "in_flight_max", "handle_ms_mean")}
    out["runs"] = len(rows)
    out["all_complete"] = all(r["complete"] and r["exit_code"] == 0 for r in rows)
    out["goal_met"] = None if out["ratio_steady"] is None else out["ratio_steady"] >= GOAL
    return out


def markdown(args: argparse.Namespace, agg: dict[float, dict[str, Any]]) -> str:
    def f(x: Any, nd: int = 1) -> str:
        return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)

    lines = [
        f"One host, {args.pages} URLs, `--per-host-concurrency {args.slots}`, `crawl {args.mode}`; medians of "
        f"{args.runs} run(s) per delay; ratio = steady pages/s / (slots / mean fetch time), goal >= {GOAL}.",
        "",
        "| delay ms | pages/s (steady) | pages/s (wall) | mean fetch ms | slots / mean fetch | ratio | goal "
        "| server mean / max in flight | server handle ms | server CPU cores | CPU-ms/page | all pages |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for delay, a in agg.items():
        verdict = "n/a" if a["goal_met"] is None else ("met" if a["goal_met"] else "NOT met")
        lines.append(
            f"| {f(delay, 0)} | {f(a['pages_per_s_steady'], 0)} | {f(a['pages_per_s_wall'], 0)} "
            f"| {f(a['mean_fetch_ms'], 2)} | {f(a['capacity_pages_per_s'], 0)} | {f(a['ratio_steady'], 2)} | {verdict} "
            f"| {f(a['server_mean_in_flight'], 1)} / {f(a['server_in_flight_max'], 0)} "
            f"| {f(a['server_handle_ms_mean'], 2)} | {f(a['server_cpu_cores'], 2)} | {f(a['cpu_ms_per_page'], 3)} "
            f"| {'yes' if a['all_complete'] else '**no**'} |"
        )
    return "\n".join(lines)


def run_delay(args: argparse.Namespace, delay: float, workdir: Path, started: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    host = start_host(args, delay)
    try:
        for run in range(1, args.runs + 1):
            if rows and time.monotonic() - started > args.budget_s:
                log(f"time budget ({args.budget_s:.0f} s) spent: {len(rows)} run(s) at {delay:g} ms")
                break
            r = one_run(args, host, delay, workdir / f"d{delay:g}" / f"run{run}")
            r["run"] = run
            rows.append(r)
            log(
                f"{delay:g} ms run {run}: {r['pages']}/{r['pages_expected']} pages, {r['pages_per_s_steady']:.0f}/s "
                f"steady ({r['pages_per_s_wall']:.0f}/s wall), mean fetch {r['mean_fetch_ms']} ms, ratio "
                f"{r['ratio_steady']}, server in flight {r['server'].get('mean_in_flight')}, exit {r['exit_code']}"
            )
    finally:
        host.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    if not become_subreaper():
        log("warning: could not become a child subreaper; CPU of orphaned processes is not counted")
    workdir = Path(tempfile.mkdtemp(prefix="crawl-per-host-"))
    log(f"workdir {workdir}")
    rows: list[dict[str, Any]] = []
    try:
        for delay in args.delays:
            rows += run_delay(args, delay, workdir, started)
    finally:
        reap_strays(set(), 10)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    by_delay = {d: [r for r in rows if r["delay_ms"] == d] for d in args.delays}
    agg = {d: medians(rs) for d, rs in by_delay.items() if rs}
    table = markdown(args, agg)
    meta = {
        "command": "python scripts/bench_per_host.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "code": code_identity(args.crawl_src),
        "cpus": os.cpu_count(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "workdir": str(workdir) if args.keep_workdir else None,
    }
    doc = {"meta": meta, "medians": {str(d): a for d, a in agg.items()}, "runs": rows, "markdown": table}
    print(json.dumps(doc, indent=1, default=str) if args.json else table, flush=True)
    return 0 if agg and all(a["all_complete"] for a in agg.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
