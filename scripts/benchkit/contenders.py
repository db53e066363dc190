"""The contenders (`crawl run`, `crawl worker`, the bare aiohttp loop, Scrapy) and how each is run and scored.

Each ``contender_*`` function runs one crawl of the whole site and returns its :class:`Measurement` and what it
found; :func:`run_contender` turns that into one result row (pages found against the BFS, rates, CPU per page).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchkit import ROOT
from benchkit.measure import Measurement, measure
from benchkit.processes import Managed, start_redis
from benchkit.site import Site, canonical

CONTENDERS = ("crawl-run", "crawl-worker", "bare-pool", "bare-inline", "scrapy")
SCRIPTS = ROOT / "scripts"


@dataclass(frozen=True, slots=True)
class Variant:
    """`crawl-worker` with extra flags, on the same harness, so a feature's cost reads as a ratio to the plain run.

    ``goal`` is the issue's floor for pages/s relative to ``crawl-worker`` (see :func:`benchkit.report.targets`).
    ``flags`` gets the run's directory, for flags that name an output place.
    """

    flags: Callable[[Path], list[str]]
    goal: float
    issue: int
    what: str
    env_path: tuple[Path, ...] = field(default=())


VARIANTS: dict[str, Variant] = {
    # --follow keeps link following as in the plain run (with --parser only what the parser yields is followed)
    "crawl-worker-parser": Variant(
        lambda _d: ["--parser", "benchkit.trivial_parser:parse", "--follow"], 0.9, 13, "trivial --parser", (SCRIPTS,)
    ),
    "crawl-worker-warc": Variant(lambda d: ["--warc", str(d / "warc")], 0.85, 15, "--warc"),
    "crawl-worker-curl": Variant(lambda _d: ["--fetcher", "curl", "--impersonate", "chrome"], 0.8, 17, "curl fetcher"),
}
# not run by default: Scrapy with its in-memory scheduler (reference only), and the crawl-worker variants
OPTIONAL_CONTENDERS = ("scrapy-mem", *VARIANTS)


def clean_env(src: Path = ROOT, also: Iterable[Path] = ()) -> dict[str, str]:
    """No proxy or CRAWL_* variables leak in; `src` (the crawl source tree to measure) comes first on the path,
    then `also` (scripts/, for the variant's `--parser benchkit.trivial_parser:parse`)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CRAWL_")}
    env.pop("REDIS_URL", None)
    head = os.pathsep.join([str(src), *(str(p) for p in also)])
    env["PYTHONPATH"] = head + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def found_urls_jsonl(paths: Iterable[Path]) -> tuple[list[str], Counter[int]]:
    urls: list[str] = []
    statuses: Counter[int] = Counter()
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    urls.append(rec["url"])
                    statuses[int(rec.get("status") or 0)] += 1
    return urls, statuses


def crawl_log_metrics(log: Path) -> dict[str, Any]:
    """From `--log-format json` output: the summary line, and parse_wait_share / lag over throughput lines."""
    out: dict[str, Any] = {}
    shares: list[tuple[float, int]] = []
    lags: list[float] = []
    rss: list[float] = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == "summary":
            out["summary"] = obj
        elif obj.get("event") == "throughput":
            if obj.get("parse_wait_share") is not None:
                shares.append((float(obj["parse_wait_share"]), int(obj.get("pages") or 0)))
            if obj.get("loop_lag_p99_ms") is not None:
                lags.append(float(obj["loop_lag_p99_ms"]))
            if obj.get("rss_mb") is not None:
                rss.append(float(obj["rss_mb"]))
    s = out.get("summary", {})
    out["loop_lag_p99_ms"] = s.get("loop_lag_p99_ms")
    out["peak_rss_mb_self"] = s.get("peak_rss_mb")
    out["pages_reported"] = s.get("pages")
    out["worker_elapsed_s"] = s.get("elapsed_s")
    out["errors"] = s.get("errors")
    weight = sum(n for _, n in shares)
    out["parse_wait_share"] = round(sum(x * n for x, n in shares) / weight, 3) if weight else None
    out["loop_lag_p99_ms_worst_window"] = max(lags) if lags else None
    return out


@dataclass
class Env:
    args: argparse.Namespace
    site: Site
    proxy_url: str
    workdir: Path
    servers: list[Managed]
    keep: set[int]


def contender_crawl_run(e: Env, run_dir: Path) -> tuple[Measurement, dict[str, Any]]:
    home = run_dir / "home"
    out = run_dir / "out"
    seeds = run_dir / "seeds.txt"
    seeds.write_text(e.site.start_url + "\n")
    cmd = [
        sys.executable,
        "-m",
        "crawler",
        "run",
        str(seeds),
        "--home",
        str(home),
        "--output",
        str(out),
        *crawl_flags(e),
    ]
    pidfile = None

    def redis_proc() -> psutil.Process | None:
        nonlocal pidfile
        path = home / "redis.pid"
        if pidfile is None:
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                pidfile = psutil.Process(int(path.read_text().strip()))
        return pidfile

    m = measure(
        cmd,
        clean_env(e.args.crawl_src),
        run_dir / "log.txt",
        e.args.contender_timeout_s,
        e.keep,
        e.servers,
        extra=redis_proc,
        cwd=e.args.crawl_src,
    )
    m.cpu_redis_s = 0.0  # the embedded redis is our (subreaped) child: already inside cpu_tree_s
    urls, statuses = found_urls_jsonl(sorted(out.glob("*.jsonl")))
    return m, {
        "urls": urls,
        "statuses": statuses,
        "crawl": crawl_log_metrics(run_dir / "log.txt"),
        "embedded_redis_cpu_s_sampled": round(m.cpu_extra_sampled_s, 2),
    }


def crawl_flags(e: Env) -> list[str]:
    return [
        "--concurrency",
        str(e.args.concurrency),
        "--per-host-concurrency",
        "0",
        "--no-robots",
        "--proxy",
        e.proxy_url,
        "--log-format",
        "json",
        "--log-interval",
        "1",
    ]


def contender_crawl_worker(
    e: Env,
    run_dir: Path,
    cmd_prefix: list[str] | None = None,
    timeout_s: float | None = None,
    variant: Variant | None = None,
) -> tuple[Measurement, dict[str, Any]]:
    """`crawl worker --until-idle` on a private redis-server; the Redis's CPU is added to the tree's.

    A ``variant`` adds its flags (and path entries) to the very same run, and its outputs are counted.
    """
    redis = start_redis(run_dir, "redis")
    e.keep.add(redis.proc.pid)
    try:
        out = run_dir / "out"
        seeds = run_dir / "seeds.txt"
        seeds.write_text(e.site.start_url + "\n")
        src = e.args.crawl_src
        env = clean_env(src, variant.env_path if variant else ())
        url = redis.info["url"]
        subprocess.run(
            [sys.executable, "-m", "crawler", "enqueue", str(seeds), "--redis", url],
            cwd=src,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        cmd = [
            *(cmd_prefix or []),
            sys.executable,
            "-m",
            "crawler",
            "worker",
            "--redis",
            url,
            "--until-idle",
            "--output",
            str(out),
            *crawl_flags(e),
            *(variant.flags(run_dir) if variant else []),
        ]
        m = measure(
            cmd, env, run_dir / "log.txt", timeout_s or e.args.contender_timeout_s, e.keep, e.servers, redis, cwd=src
        )
        stats = subprocess.run(
            [sys.executable, "-m", "crawler", "stats", "--json", "--redis", url],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        redis.stop()
        e.keep.discard(redis.proc.pid)
    urls, statuses = found_urls_jsonl(sorted(out.glob("*.jsonl")))
    extra: dict[str, Any] = {"urls": urls, "statuses": statuses, "crawl": crawl_log_metrics(run_dir / "log.txt")}
    with contextlib.suppress(ValueError):
        extra["frontier_stats"] = json.loads(stats.stdout)
    if variant:
        extra["variant_outputs"] = variant_outputs(run_dir)
    return m, extra


def variant_outputs(run_dir: Path) -> dict[str, Any]:
    """What a variant's feature left behind (items, WARC files, the records' `http_version`), so a run where the
    flag did nothing yet (not wired in the worker) shows as such instead of passing for a cheap feature."""
    items = sorted((run_dir / "out" / "items").glob("*.jsonl"))
    warcs = sorted((run_dir / "warc").glob("*.warc*"))
    item_lines = 0
    for p in items:
        with open(p, "rb") as f:
            item_lines += sum(1 for line in f if line.strip())
    versions: Counter[str] = Counter()
    for p in sorted((run_dir / "out").glob("*.jsonl")):
        with open(p, encoding="utf-8") as f:
            versions.update(str(json.loads(line).get("http_version")) for line in f if line.strip())
    return {
        "item_files": len(items),
        "items": item_lines,
        "warc_files": len(warcs),
        "warc_mb": round(sum(p.stat().st_size for p in warcs) / 1e6, 2),
        "http_versions": dict(versions),
    }


def contender_bare(e: Env, run_dir: Path, parse: str) -> tuple[Measurement, dict[str, Any]]:
    out = run_dir / "out.jsonl"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bare_loop.py"),
        e.site.start_url,
        "--proxy",
        e.proxy_url,
        "--concurrency",
        str(e.args.concurrency),
        "--parse",
        parse,
        "--output",
        str(out),
    ]
    m = measure(cmd, clean_env(), run_dir / "log.txt", e.args.contender_timeout_s, e.keep, e.servers)
    urls, statuses = found_urls_jsonl([out]) if out.exists() else ([], Counter())
    summary: dict[str, Any] = {}
    for line in (run_dir / "log.txt").read_text(errors="replace").splitlines():
        if line.startswith('{"event": "summary"') or line.startswith('{"event":"summary"'):
            summary = json.loads(line)
    return m, {"urls": urls, "statuses": statuses, "bare": summary}


def contender_scrapy(e: Env, run_dir: Path, use_redis: bool = True) -> tuple[Measurement, dict[str, Any]]:
    redis = start_redis(run_dir, "redis") if use_redis else None
    if redis:
        e.keep.add(redis.proc.pid)
    try:
        out = run_dir / "out.jsonl"
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / "scrapy_bench" / "run.py"),
            e.site.start_url,
            "--proxy",
            e.proxy_url,
            "--concurrency",
            str(e.args.concurrency),
            "--output",
            str(out),
            *(["--redis", redis.info["url"]] if redis else ["--memory-scheduler"]),
        ]
        m = measure(cmd, clean_env(), run_dir / "log.txt", e.args.contender_timeout_s, e.keep, e.servers, redis)
    finally:
        if redis:
            redis.stop()
            e.keep.discard(redis.proc.pid)
    urls, statuses = found_urls_jsonl([out]) if out.exists() else ([], Counter())
    summary: dict[str, Any] = {}
    for line in (run_dir / "log.txt").read_text(errors="replace").splitlines():
        if line.startswith('{"event": "summary"'):
            summary = json.loads(line)
    return m, {"urls": urls, "statuses": statuses, "scrapy": summary}


def run_contender(name: str, e: Env, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    if name == "crawl-run":
        m, extra = contender_crawl_run(e, run_dir)
    elif name == "crawl-worker":
        m, extra = contender_crawl_worker(e, run_dir)
    elif name in VARIANTS:
        m, extra = contender_crawl_worker(e, run_dir, variant=VARIANTS[name])
    elif name == "bare-pool":
        m, extra = contender_bare(e, run_dir, "pool")
    elif name == "bare-inline":
        m, extra = contender_bare(e, run_dir, "inline")
    elif name == "scrapy":
        m, extra = contender_scrapy(e, run_dir)
    elif name == "scrapy-mem":
        m, extra = contender_scrapy(e, run_dir, use_redis=False)
    else:
        raise ValueError(name)
    urls = extra.pop("urls")
    statuses = extra.pop("statuses")
    canon = [canonical(u) for u in urls]
    distinct = set(canon)
    expected = set(e.site.expected)
    pages = len(distinct)
    cpu = m.cpu_tree_s + m.cpu_redis_s
    res: dict[str, Any] = {
        "contender": name,
        "pages_found": pages,
        "pages_expected": len(expected),
        "match": distinct == expected,
        "missing": len(expected - distinct),
        "extra": len(distinct - expected),
        "duplicate_records": len(canon) - pages,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": round(m.wall_s, 2),
        "pages_per_s": round(pages / m.wall_s, 1) if m.wall_s else 0.0,
        "cpu_s": round(cpu, 2),
        "cpu_tree_s": round(m.cpu_tree_s, 2),
        "cpu_redis_s": round(m.cpu_redis_s, 2),
        "cpu_sampled_s": round(m.cpu_sampled_s, 2),
        "cpu_ms_per_page": round(cpu * 1000 / pages, 3) if pages else None,
        "peak_rss_main_mb": round(m.peak_rss_main_mb, 1),
        "peak_rss_tree_mb": round(m.peak_rss_tree_mb, 1),
        "peak_rss_redis_mb": round(m.peak_rss_redis_mb, 1),
        "servers_cpu_s": m.servers_cpu_s,
        "foreign_cpu_s": round(m.foreign_cpu_s, 2),
        "harness_cpu_s": round(m.harness_cpu_s, 2),
        "foreign_cores": round(m.foreign_cpu_s / m.wall_s, 2) if m.wall_s else 0.0,
        "loadavg_before": round(m.loadavg_before, 2),
        "exit_code": m.exit_code,
        "timed_out": m.timed_out,
        "log": str(run_dir / "log.txt"),
        **extra,
    }
    if not res["match"]:
        sample = sorted(expected - distinct)[:3] + sorted(distinct - expected)[:3]
        res["mismatch_sample"] = sample
    return res
