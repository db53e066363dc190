#!/usr/bin/env python3
"""Side-by-side crawl benchmark: `crawl` vs a bare aiohttp loop vs Scrapy + scrapy-redis, in one run.

What it does, in order:

1. Generates (once, cached) a deterministic static site of `--pages` pages (20-80 KB each, 20-50 links per page:
   plain, with fragments, absolute, relative, repeated, query pages with reordered parameters, 404s, off-site,
   mailto/javascript) under `--cache-dir`, and computes by BFS the exact set of URLs reachable from page 0.
2. Serves it with nginx (`--server nginx`, falls back to a pre-forked aiohttp static server) and puts an
   authenticating forward proxy in front (tinyproxy with BasicAuth, falling back to the repo's
   `crawler.testing.proxy_server`).
3. Runs each contender `--runs` times, interleaved (run 1 of every contender, then run 2, ...), each crawling the
   whole site from page 0 through the proxy, with link following and dedup:
     crawl-run     `crawl run` on the embedded Redis (fresh --home)
     crawl-worker  `crawl worker --until-idle` against a separate redis-server
     bare-pool     scripts/bare_loop.py, parsing in a ProcessPoolExecutor
     bare-inline   scripts/bare_loop.py, parsing on the event loop (reference)
     scrapy        Scrapy + scrapy-redis (scripts/scrapy_bench/)
   and, only when named in `--contenders`, variants of crawl-worker on the same harness (see
   benchkit.contenders.VARIANTS; the report gives each one's pages/s and CPU as a ratio to crawl-worker):
     crawl-worker-parser  with `--parser benchkit.trivial_parser:parse --follow` (issue 13: >= 0.9x)
     crawl-worker-warc    with `--warc DIR` (issue 15: >= 0.85x)
     crawl-worker-curl    with `--fetcher curl --impersonate chrome` (issue 17: >= 0.8x)
   and measures wall time, pages found (checked URL by URL against the BFS), CPU seconds of the contender's whole
   process tree plus the Redis server it uses, and peak RSS (main process; whole tree).
4. Optionally profiles one `crawl worker` pass with py-spy (not timed) and summarises self time by function and
   by area (parsing, URL normalisation, aiohttp, redis, json, event loop, ...).
5. Prints a Markdown table (medians) and writes JSON to `--out` (default bench-out/).

CPU accounting: this process makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so every process a
contender starts, even the daemonized embedded redis-server, is eventually reaped either by its parent or by us;
the contender's CPU is then the delta of getrusage(RUSAGE_CHILDREN) around its run, plus the psutil CPU delta of
a separate redis-server it talks to. psutil sampling (every 0.1 s) gives peak RSS and a cross-check.

Quick look: `python scripts/bench.py --runs 1 --pages 5000`; full: `python scripts/bench.py` (20,000 pages, 3 runs).
The parts live in `scripts/benchkit/` (site, processes, measure, contenders, profile, report); this file is the
command line and the order of the work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import ROOT
from benchkit.contenders import CONTENDERS, OPTIONAL_CONTENDERS, VARIANTS, Env, run_contender
from benchkit.measure import reap_strays
from benchkit.processes import (
    PROXY_PASSWORD,
    PROXY_USER,
    Managed,
    become_subreaper,
    check_proxy,
    port_free,
    serve_static,
    start_nginx,
    start_python_proxy,
    start_python_static,
    start_tinyproxy,
)
from benchkit.profile import run_profile
from benchkit.report import aggregate, code_identity, markdown, profile_markdown, ratios, targets
from benchkit.site import Site, ensure_site, warm_page_cache

from crawler.testing.services import free_port


def serve_static_main(argv: list[str]) -> int:
    """`bench.py serve-static`: the fallback origin, run by :func:`benchkit.processes.start_python_static`."""
    sp = argparse.ArgumentParser()
    sp.add_argument("--root", required=True)
    sp.add_argument("--port", type=int, required=True)
    sp.add_argument("--processes", type=int, default=2)
    a = sp.parse_args(argv)
    return serve_static(a.root, a.port, a.processes)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pages", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help="comma-separated, from " + ",".join(CONTENDERS + OPTIONAL_CONTENDERS),
    )
    ap.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--proxy", dest="proxy_impl", choices=("auto", "tinyproxy", "python"), default="auto")
    ap.add_argument("--site-port", type=int, default=18431, help="baked into the site's absolute links")
    ap.add_argument(
        "--cache-dir", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crawl-bench"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--profile-variant", choices=sorted(VARIANTS), help="profile the crawl-worker pass with this variant's flags"
    )
    ap.add_argument("--budget-s", type=float, default=1500, help="start no new run after this many seconds")
    ap.add_argument(
        "--scrapy-runs",
        type=int,
        default=1,
        help="runs of the Scrapy contenders (slow: ~8 min per 20,000 pages on 2 busy cores)",
    )
    ap.add_argument("--contender-timeout-s", type=float, default=0, help="0: 60 s + 60 ms per page")
    ap.add_argument(
        "--crawl-src",
        type=Path,
        default=ROOT,
        help="source tree whose crawler/ + workers/ the crawl contenders run (A/B against another commit: "
        "git archive COMMIT | tar -x -C DIR)",
    )
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args(argv)
    args.crawl_src = args.crawl_src.resolve()
    args.names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    for n in args.names:
        if n not in CONTENDERS + OPTIONAL_CONTENDERS:
            ap.error(f"unknown contender {n!r}")
    if not args.contender_timeout_s:
        args.contender_timeout_s = 60 + 0.06 * args.pages
    return args


def start_origin(args: argparse.Namespace, site: Site, port: int, workdir: Path) -> Managed:
    """nginx when installed (or asked for), else the pre-forked aiohttp static server."""
    if args.server in ("auto", "nginx") and shutil.which("nginx"):
        return start_nginx(site, port, args.nginx_workers, workdir)
    if args.server == "nginx":
        raise SystemExit("nginx not installed (apt-get install nginx-light)")
    return start_python_static(site, port, 2, workdir)


def start_proxy(args: argparse.Namespace, workdir: Path) -> Managed:
    """tinyproxy with BasicAuth when installed (or asked for), else crawler.testing's proxy server."""
    proxy_port = free_port()
    if args.proxy_impl in ("auto", "tinyproxy") and shutil.which("tinyproxy"):
        return start_tinyproxy(proxy_port, workdir)
    if args.proxy_impl == "tinyproxy":
        raise SystemExit("tinyproxy not installed (apt-get install tinyproxy)")
    return start_python_proxy(proxy_port, workdir)


def run_all(args: argparse.Namespace, env: Env, workdir: Path, started: float) -> tuple[list[dict[str, Any]], int]:
    """Every contender `--runs` times, interleaved; returns the result rows and how many runs were done."""
    results: list[dict[str, Any]] = []
    runs_done = 0
    for run in range(1, args.runs + 1):
        if run > 1 and time.monotonic() - started > args.budget_s:
            print(f"time budget ({args.budget_s:.0f}s) spent: stopping after {runs_done} run(s)", flush=True)
            break
        for name in args.names:
            if name.startswith("scrapy") and run > args.scrapy_runs:
                continue
            r = run_contender(name, env, workdir / f"run{run}" / name)
            r["run"] = run
            results.append(r)
            print(
                f"run {run} {name:13s} pages {r['pages_found']}/{r['pages_expected']}"
                f"{'' if r['match'] else ' MISMATCH'} wall {r['wall_s']:.2f}s {r['pages_per_s']:.0f}/s "
                f"cpu {r['cpu_s']:.2f}s ({r['cpu_ms_per_page']} ms/page) rss {r['peak_rss_main_mb']:.0f}/"
                f"{r['peak_rss_tree_mb']:.0f} MB foreign {r['foreign_cores']} cores exit {r['exit_code']}",
                flush=True,
            )
        runs_done = run
    return results, runs_done


def write_report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    profile: dict[str, Any] | None,
    meta: dict[str, Any],
    stamp: str,
) -> int:
    """Medians, ratios and targets as JSON and Markdown under `--out`; exit 1 if any contender missed a page."""
    agg = aggregate(results)
    ratios(agg)
    tgt = targets(agg)
    table = markdown(agg, tgt, meta)
    doc = {"meta": meta, "medians": agg, "targets": tgt, "runs": results, "profile": profile, "markdown": table}
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    (args.out / "bench-latest.json").write_text(json.dumps(doc, indent=1, default=str))
    md = table + ("\n\n" + profile_markdown(profile) if profile else "")
    (args.out / f"bench-{stamp}.md").write_text(md + "\n")
    print("\n" + md + f"\n\nJSON: {path}", flush=True)
    return 0 if all(a["all_match"] for a in agg.values()) else 1


def site_port(args: argparse.Namespace) -> int:
    """`--site-port`, or a free port when that one is busy (the site's absolute links are generated for it)."""
    port = int(args.site_port)
    if not port_free(port):
        port = free_port()
        print(f"port {args.site_port} is busy; serving on {port} (the site is generated for that port)", flush=True)
    return port


def run_meta(
    args: argparse.Namespace,
    argv: list[str],
    site: Site,
    servers: list[Managed],
    runs_done: int,
    subreaper: bool,
    code: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """What was measured, on what, by which command: the report's header and the JSON's `meta`."""
    return {
        "command": "python scripts/bench.py " + " ".join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "site": site.manifest,
        "server": servers[0].info if servers else {},
        "proxy": servers[1].info if len(servers) > 1 else {},
        "concurrency": args.concurrency,
        "runs_requested": args.runs,
        "runs_done": runs_done,
        "scrapy_runs": args.scrapy_runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "subreaper": subreaper,
        "code": code,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["serve-static"]:
        return serve_static_main(argv[1:])
    args = parse_args(argv)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt  # run the finally blocks: stop the servers we started

    signal.signal(signal.SIGTERM, on_term)
    args.out.mkdir(parents=True, exist_ok=True)
    subreaper = become_subreaper()
    if not subreaper:
        print("warning: could not become a child subreaper; the embedded Redis's CPU is not counted", flush=True)

    port = site_port(args)
    code = code_identity(args.crawl_src)
    print(f"measuring code {code}", flush=True)
    site = ensure_site(args.cache_dir, args.pages, args.seed, port)
    warm_page_cache(site.root)
    workdir = Path(tempfile.mkdtemp(prefix="crawl-bench-"))
    servers: list[Managed] = []
    results: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    runs_done = 0
    try:
        server = start_origin(args, site, port, workdir)
        servers.append(server)
        proxy = start_proxy(args, workdir)
        servers.append(proxy)
        check_proxy(proxy.port, site.start_url)
        proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
        keep = set().union(*(s.pids() for s in servers))
        env = Env(args, site, proxy_url, workdir, servers, keep)
        print(f"origin: {server.info} on :{port}; proxy: {proxy.info} on :{proxy.port}; workdir {workdir}", flush=True)
        results, runs_done = run_all(args, env, workdir, started)
        if args.profile and ("crawl-worker" in args.names or args.profile_variant):
            profile = run_profile(env, args.out, stamp, VARIANTS.get(args.profile_variant or ""))
    finally:
        for s in reversed(servers):
            s.stop()
        reap_strays(set(), 10)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    meta = run_meta(args, argv, site, servers, runs_done, subreaper, code, started)
    return write_report(args, results, profile, meta, stamp)


if __name__ == "__main__":
    sys.exit(main())
