"""Crawl-wide views read from Redis: `crawl stats`, `crawl workers`, `crawl top`.

Everything here is derived from bounded keys (counters, per-second buckets that expire, heartbeats with a TTL):
no key per URL, so watching a crawl costs the same at a thousand pages as at a billion.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import time
import tty
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from rich.console import Group
from rich.table import Table

from crawler.frontier import Counters, Frontier, Scheduled, now_ms
from crawler.heartbeat import live_workers
from crawler.redact import redact_url
from crawler.settings import Settings
from crawler.traffic import read as read_traffic


async def crawl_snapshot(redis: aioredis.Redis, crawl_name: str) -> dict[str, Any]:
    frontier = Frontier(redis, crawl_name)
    c = await frontier.counters()
    rate10 = await frontier.pages_per_s(10)
    rate60 = await frontier.pages_per_s(60)
    remaining = c.queued + c.deferred + c.inflight
    eta_s = round(remaining / rate60, 1) if rate60 > 0 and remaining else None
    workers = await live_workers(redis, crawl_name)
    traffic = await read_traffic(redis, crawl_name)
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
        **recurring_counts(c),
        **traffic,
    }


def recurring_counts(c: Counters) -> dict[str, Any]:
    """The recurring part of `crawl stats`: URLs with a schedule, waiting, due now, passes, next pass in s."""
    nxt = None if c.next_pass_ms is None else round(max(0, c.next_pass_ms - now_ms()) / 1000, 1)
    return {
        "recurring": c.recurring,
        "scheduled": c.scheduled,
        "due": c.due,
        "passes": c.passes,
        "failed_passes": c.failed_passes,
        "next_pass_in_s": nxt,
    }


def _recurring_line(s: dict[str, Any]) -> str:
    nxt = "-" if s.get("next_pass_in_s") is None else f"{s['next_pass_in_s']:.0f}s"
    return (
        f"\nrecurring={s['recurring']} scheduled={s['scheduled']} due={s['due']} passes={s['passes']} "
        f"failed_passes={s['failed_passes']} next_pass_in={nxt}"
    )


def redis_location(settings: Settings) -> str:
    """Where a command looks for the crawl: `redis://host:port/0` (password redacted) or the embedded server's
    directory. Said by `crawl stats` because, run from another directory, the embedded default is a new, empty
    Redis there."""
    if settings.redis_url:
        return redact_url(settings.redis_url)
    return f"embedded Redis in {settings.home.resolve()}"


def describe_crawl(settings: Settings) -> str:
    """One line: `crawl NAME at redis://host:6379/0` or `crawl NAME at embedded Redis in /abs/.crawl`."""
    return f"crawl {settings.crawl_name} at {redis_location(settings)}"


def format_snapshot(s: dict[str, Any], where: str | None = None) -> str:
    """`crawl stats` as text. `where` (from `redis_location`) is printed on the first line; an empty crawl also
    says where to look instead, since zeros alone cannot tell "nothing yet" from "wrong place"."""
    eta = f"{s['eta_s']:.0f}s" if s.get("eta_s") is not None else "-"
    at = f" at {where}" if where else ""
    text = (
        f"crawl {s['crawl']}{at}: enqueued={s['enqueued']} done={s['done']} dead={s['dead']} queued={s['queued']} "
        f"deferred={s['deferred']} inflight={s['inflight']} retried={s['retried']}\n"
        f"pages/s: {s['pages_per_s_10s']:.1f} (10s) {s['pages_per_s']:.1f} (60s)  eta={eta}  workers={s['workers']}"
    )
    if s.get("recurring") or s.get("scheduled") or s.get("passes"):
        text += _recurring_line(s)
    if s.get("gateway_bytes") or s.get("not_modified"):
        gws = " ".join(f"{k}={v / 1e6:.1f}MB" for k, v in sorted(s.get("gateway_bytes", {}).items())) or "-"
        text += (
            f"\ntraffic: via gateways {gws}; 304s={s.get('not_modified', 0)} "
            f"saving ~{s.get('saved_bytes_estimate', 0) / 1e6:.1f}MB"
        )
    if s["enqueued"] == 0 and where:
        text += (
            f"\nnothing was ever enqueued in crawl {s['crawl']} there: check --crawl and --redis "
            "(or CRAWL_HOME for the embedded Redis)"
        )
    return text


def scheduled_json(row: Scheduled) -> dict[str, Any]:
    """One line of `crawl schedule --json` (validators included: they are the server's, not secrets)."""
    r = row.recur
    return {
        "url": row.url,
        "due_at": row.due_ms / 1000,
        "every_s": r.every_s,
        "depth": row.depth,
        "etag": r.etag,
        "last_modified": r.last_modified,
        "digest": r.digest,
    }


def format_scheduled(rows: Sequence[Scheduled], c: Counters) -> str:
    """`crawl schedule` as text: a count line, then one line per URL (next pass, period, URL)."""
    from crawler.schedule import format_duration

    head = f"recurring={c.recurring} scheduled={c.scheduled} due={c.due} shown={len(rows)}"
    now = now_ms()
    lines = [head]
    for row in rows:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.due_ms / 1000))
        wait = max(0, row.due_ms - now) / 1000
        lines.append(f"{at}\tin {format_duration(int(wait))}\tevery {format_duration(row.recur.every_s)}\t{row.url}")
    if not rows:
        lines.append("no recurring URL is waiting for its next pass")
    return "\n".join(lines)


def cell(value: Any) -> str:
    """A table cell: `-` for None and empty collections, `k=v k=v` for a mapping, never a Python repr."""
    if value is None or value in ({}, [], ""):
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in sorted(value.items()))
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


def gateway_state(entry: dict[str, Any]) -> str:
    """The breaker state the heartbeat reports for a gateway (`state`, or `gateway`/`breaker`), `-` if none."""
    return cell(entry.get("state", entry.get("gateway", entry.get("breaker"))))


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]], right_from: int = 1) -> Table:
    """Columns sized by rich from their content; headers wrap at spaces instead of being cut, cells fold."""
    t = Table(title=title, expand=True)
    for i, col in enumerate(columns):
        widest_word = max(len(w) for w in col.split())
        t.add_column(col, justify="right" if i >= right_from else "left", min_width=widest_word, overflow="fold")
    for row in rows:
        t.add_row(*row)
    return t


def render_top(snap: dict[str, Any], workers: list[dict[str, Any]]) -> Group:
    """The `crawl top` screen: crawl-wide counts as label/value pairs (they fit 80 columns), then one table of
    workers and one of gateways."""
    head = Table.grid(expand=True, padding=(0, 2))
    for _ in range(3):
        head.add_column(justify="left")
        head.add_column(justify="right")
    eta = f"{snap['eta_s']:.0f}s" if snap.get("eta_s") is not None else "-"
    pairs = [
        ("done", cell(snap["done"])),
        ("queued", cell(snap["queued"])),
        ("pages/s 10s", f"{snap['pages_per_s_10s']:.1f}"),
        ("dead", cell(snap["dead"])),
        ("deferred", cell(snap["deferred"])),
        ("pages/s 60s", f"{snap['pages_per_s']:.1f}"),
        ("retried", cell(snap["retried"])),
        ("inflight", cell(snap["inflight"])),
        ("eta", eta),
    ]
    for i in range(0, len(pairs), 3):
        head.add_row(*(x for pair in pairs[i : i + 3] for x in pair))
    title = Table.grid()
    title.add_row(f"[bold]crawl {snap['crawl']}[/bold]" + (f" at {snap['where']}" if snap.get("where") else ""))
    wt = _table(
        "workers",
        ("id", "pages/s", "inflight", "parse backlog", "rss MB", "proxy ok", "errors"),
        [
            (
                cell(w.get("id")),
                cell(w.get("pages_per_s")),
                cell(w.get("inflight")),
                cell(w.get("parse_backlog")),
                cell(w.get("rss_mb")),
                _percent(w.get("proxy_success_rate")),
                cell(w.get("errors")),
            )
            for w in workers
        ],
    )
    pt = _table(
        "gateways",
        ("worker", "proxy", "state", "health", "requests", "failures", "rotations"),
        [
            (
                cell(w.get("id")),
                cell(p.get("proxy")),
                gateway_state(p),
                cell(p.get("health")),
                cell(p.get("requests")),
                cell(p.get("failures")),
                cell(p.get("rotations")),
            )
            for w in workers
            for p in w.get("proxies") or []
        ],
        right_from=3,
    )
    return Group(title, head, wt, pt)


async def run_top(settings: Settings, interval: float) -> int:
    """A live terminal view; quits on q or Ctrl-C (raw terminal restored on the way out)."""
    from rich.live import Live

    from crawler.connection import open_redis

    where = redis_location(settings)

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
            snap = {**await crawl_snapshot(redis, settings.crawl_name), "where": where}
            with Live(render_top(snap, []), refresh_per_second=4, screen=False) as live:
                while not quit_now.is_set():
                    snap = {**await crawl_snapshot(redis, settings.crawl_name), "where": where}
                    live.update(render_top(snap, await live_workers(redis, settings.crawl_name)))
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
