"""Crawl-wide views read from Redis: `crawl stats`, `crawl workers`, `crawl top`.

Everything here is derived from bounded keys (counters, per-second buckets that expire, heartbeats with a TTL):
no key per URL, so watching a crawl costs the same at a thousand pages as at a billion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from typing import Any

import redis.asyncio as aioredis

from crawler.frontier import Frontier
from crawler.heartbeat import live_workers
from crawler.settings import Settings


async def crawl_snapshot(redis: aioredis.Redis, crawl_name: str) -> dict[str, Any]:
    frontier = Frontier(redis, crawl_name)
    c = await frontier.counters()
    rate10 = await frontier.pages_per_s(10)
    rate60 = await frontier.pages_per_s(60)
    remaining = c.queued + c.deferred + c.inflight
    eta_s = round(remaining / rate60, 1) if rate60 > 0 and remaining else None
    workers = await live_workers(redis, crawl_name)
    return {
        "crawl": crawl_name,
        "enqueued": c.enqueued,
        "queued": c.queued,
        "deferred": c.deferred,
        "inflight": c.inflight,
        "done": c.done,
        "dead": c.dead,
        "retried": c.retried,
        "pages_per_s": round(rate60, 2),
        "pages_per_s_10s": round(rate10, 2),
        "eta_s": eta_s,
        "consistent": c.consistent,
        "workers": len(workers),
    }


def format_snapshot(s: dict[str, Any]) -> str:
    eta = f"{s['eta_s']:.0f}s" if s.get("eta_s") is not None else "-"
    return (
        f"crawl {s['crawl']}: enqueued={s['enqueued']} done={s['done']} dead={s['dead']} queued={s['queued']} "
        f"deferred={s['deferred']} inflight={s['inflight']} retried={s['retried']}\n"
        f"pages/s: {s['pages_per_s_10s']:.1f} (10s) {s['pages_per_s']:.1f} (60s)  eta={eta}  workers={s['workers']}"
    )


async def run_top(settings: Settings, interval: float) -> int:
    """A live terminal view; quits on q or Ctrl-C (raw terminal restored on the way out)."""
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table

    from crawler.connection import open_redis

    def render(snap: dict[str, Any], workers: list[dict[str, Any]]) -> Group:
        head = Table(title=f"crawl {snap['crawl']}", expand=True)
        for col in (
            "pages/s 10s",
            "pages/s 60s",
            "done",
            "dead",
            "queued",
            "deferred",
            "inflight",
            "retried",
            "eta",
        ):
            head.add_column(col, justify="right")
        head.add_row(
            f"{snap['pages_per_s_10s']:.1f}",
            f"{snap['pages_per_s']:.1f}",
            str(snap["done"]),
            str(snap["dead"]),
            str(snap["queued"]),
            str(snap["deferred"]),
            str(snap["inflight"]),
            str(snap["retried"]),
            f"{snap['eta_s']:.0f}s" if snap.get("eta_s") is not None else "-",
        )
        wt = Table(title="workers", expand=True)
        for col in ("id", "pages/s", "inflight", "parse backlog", "rss MB", "proxy ok", "errors"):
            wt.add_column(col)
        for w in workers:
            wt.add_row(
                str(w.get("id")),
                str(w.get("pages_per_s")),
                str(w.get("inflight")),
                str(w.get("parse_backlog")),
                str(w.get("rss_mb")),
                str(w.get("proxy_success_rate")),
                json.dumps(w.get("errors", {})),
            )
        pt = Table(title="proxies", expand=True)
        for col in ("worker", "proxy", "health", "requests", "failures", "rotations"):
            pt.add_column(col)
        for w in workers:
            for p in w.get("proxies", []):
                pt.add_row(
                    str(w.get("id")),
                    p["proxy"],
                    f"{p['health']:.2f}",
                    str(p["requests"]),
                    str(p["failures"]),
                    str(p["rotations"]),
                )
        return Group(head, wt, pt)

    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    old = termios.tcgetattr(fd) if fd is not None else None
    loop = asyncio.get_running_loop()
    # Quit on q, Ctrl-C or SIGTERM through an event: a signal never has to cancel a Redis call mid-flight.
    quit_now = asyncio.Event()

    def on_key() -> None:
        assert fd is not None
        if os.read(fd, 1) in (b"q", b"Q", b"\x03"):
            quit_now.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, quit_now.set)
    try:
        if fd is not None:
            tty.setcbreak(fd)
            loop.add_reader(fd, on_key)
        async with open_redis(settings.redis_url, settings.home) as redis:
            snap = await crawl_snapshot(redis, settings.crawl_name)
            with Live(render(snap, []), refresh_per_second=4, screen=False) as live:
                while not quit_now.is_set():
                    snap = await crawl_snapshot(redis, settings.crawl_name)
                    live.update(render(snap, await live_workers(redis, settings.crawl_name)))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(quit_now.wait(), interval)
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if fd is not None:
            loop.remove_reader(fd)
            if old is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, old)
