#!/usr/bin/env python3
"""Recrawl cost: bytes through the gateway for a second, unchanged pass over recurring URLs (issue 16).

The benchmark site (`benchkit.site`, served by nginx, which sends ETag and Last-Modified for static files) is
enqueued as recurring URLs (`crawl enqueue --every`), then crawled twice through the authenticating gateway
(tinyproxy) by `crawl worker --until-idle`: the first pass fetches every page, the second sends conditional
requests. Bytes are the body bytes the records say came through (`bytes`; a 304 has none), per pass, plus the
worker's own count of bytes through the gateway (`via_gateways`, the last throughput line). Goal: the second
pass at most 5% of the first. Bounded: `--pages` URLs, two passes, each under a time limit.

`python scripts/bench_recrawl.py` (about a minute); `--json` for the whole document.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchkit import ROOT
from benchkit.contenders import clean_env
from benchkit.processes import PROXY_PASSWORD, PROXY_USER, start_nginx, start_redis, start_tinyproxy
from benchkit.site import ensure_site

from crawler.testing.services import free_port, wait_until

GOAL = 0.05


def crawl(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crawler", *args], capture_output=True, text=True, env=env, timeout=timeout_s
    )


def stats(redis_url: str, env: dict[str, str]) -> dict[str, Any]:
    out = crawl(["stats", "--json", "--redis", redis_url], env, 30)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def one_pass(redis_url: str, gateway: str, out: Path, env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    args = ["worker", "--redis", redis_url, "--until-idle", "--no-robots", "--no-follow", "--output", str(out)]
    args += ["--proxy", gateway, "--per-host-concurrency", "0", "--log-format", "json", "--log-interval", "0.5"]
    t0 = time.monotonic()
    run = crawl(args, env, timeout_s)
    took = time.monotonic() - t0
    if run.returncode != 0:
        raise SystemExit(f"worker failed ({run.returncode}): {run.stderr[-1500:]}")
    records = [json.loads(x) for f in out.glob("*.jsonl") for x in f.read_text().splitlines()]
    lines = [json.loads(x) for x in run.stderr.splitlines() if x.startswith("{")]
    via = [sum(o["gateway_bytes"].values()) for o in lines if o.get("gateway_bytes")]
    return {
        "records": len(records),
        "status": dict(Counter(str(r["status"]) for r in records)),
        "not_modified": sum(1 for r in records if r.get("not_modified")),
        "changed": sum(1 for r in records if r.get("changed")),
        "body_bytes": sum(r["bytes"] or 0 for r in records),
        "via_gateway_bytes_last_line": via[-1] if via else None,
        "wall_s": round(took, 2),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=2000, help="site pages (all enqueued as recurring)")
    ap.add_argument("--every", default="20s", help="the recurring period (a pass must end before it)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "crawl-bench")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="crawl-recrawl-"))
    port = free_port()
    site = ensure_site(args.cache_dir, args.pages, 1, port)
    procs = [start_nginx(site, port, 1, work), start_tinyproxy(free_port(), work), start_redis(work, "redis")]
    _nginx, proxy, redis = procs
    env = clean_env(ROOT)
    try:
        url = redis.info["url"]
        gateway = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
        seeds = work / "seeds.txt"
        pages = [u for u, s in site.expected.items() if s == 200]
        seeds.write_text("".join(u + "\n" for u in pages))
        enq = crawl(["enqueue", str(seeds), "--every", args.every, "--redis", url], env, 120)
        if enq.returncode != 0:
            raise SystemExit(enq.stderr)
        first = one_pass(url, gateway, work / "pass1", env, 600)
        wait_until(lambda: stats(url, env).get("due", 0) >= len(pages), timeout_s=600, interval_s=0.5)
        second = one_pass(url, gateway, work / "pass2", env, 600)
        ratio = second["body_bytes"] / max(1, first["body_bytes"])
        doc = {"pages": len(pages), "every": args.every, "first": first, "second": second, "ratio": ratio}
        doc["goal_met"] = ratio <= GOAL
        if args.json:
            print(json.dumps(doc, indent=1))
        else:
            print("| pass | records | 200 | 304 | body bytes | via gateway (last line) | wall s |")
            print("|---|---|---|---|---|---|---|")
            for name, p in (("first", first), ("second", second)):
                print(
                    f"| {name} | {p['records']} | {p['status'].get('200', 0)} | {p['not_modified']} | "
                    f"{p['body_bytes']:,} | {p['via_gateway_bytes_last_line']} | {p['wall_s']} |"
                )
            verdict = "met" if doc["goal_met"] else "NOT met"
            print(f"\nsecond / first body bytes: {ratio:.4f} (goal <= {GOAL}: {verdict})")
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
