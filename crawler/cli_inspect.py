"""The inspection commands of `crawl`: stats, schedule, dead, purge, workers, top (registered on `crawler.cli.main`).

They read (or, for purge, delete) one crawl's keys and never lease anything; each says where it looked.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from crawler.cli import TableCommand, _fail, _settings, common_options, main, run_async
from crawler.errors import ConfigError
from crawler.settings import Settings

if TYPE_CHECKING:
    from crawler.frontier import Frontier


# ------------------------------------------------------------------------------------------------------ stats
@main.command(cls=TableCommand)
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
@common_options
def stats(as_json: bool, **common: Any) -> None:
    """Crawl-wide counters: enqueued = done + dead + queued + deferred + inflight + scheduled (recurring URLs
    waiting for their next pass)."""
    settings = _settings()
    sys.exit(run_async(_stats(settings, as_json)))


async def _stats(settings: Settings, as_json: bool) -> int:
    from crawler.connection import open_redis
    from crawler.views import crawl_snapshot, format_snapshot, redis_location

    async with open_redis(settings.redis_url, settings.home) as redis:
        snap = await crawl_snapshot(redis, settings.crawl_name)
    where = redis_location(settings)
    if as_json:
        click.echo(json.dumps({**snap, "redis": where}, sort_keys=True))
    else:
        click.echo(format_snapshot(snap, where))
    return 0


# --------------------------------------------------------------------------------------------------- schedule
@main.command(cls=TableCommand)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: url, due_at, every_s, depth, validators.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1), help="URLs to list at most.")
@click.option("--cancel", "cancel_url", default=None, metavar="URL", help="Stop the schedule of URL.")
@click.option("--all", "cancel_all", is_flag=True, help="Stop every schedule.")
@common_options
def schedule(as_json: bool, limit: int, cancel_url: str | None, cancel_all: bool, **common: Any) -> None:
    """Recurring URLs (enqueued with --every), earliest next pass first; --cancel URL or --all stops them."""
    settings = _settings()
    if cancel_url is not None and cancel_all:
        _fail("give --cancel URL or --all, not both")
    sys.exit(run_async(_schedule(settings, as_json, limit, cancel_url, cancel_all)))


async def _schedule(settings: Settings, as_json: bool, limit: int, cancel_url: str | None, cancel_all: bool) -> int:
    from crawler.connection import open_redis
    from crawler.frontier import Frontier
    from crawler.recurring import Recurring
    from crawler.views import format_scheduled, scheduled_json

    async with open_redis(settings.redis_url, settings.home) as redis:
        frontier = Frontier(redis, settings.crawl_name)
        if cancel_all:
            click.echo(f"cancelled={await Recurring(frontier).cancel_all()} (passes in progress end at their ack)")
            return 0
        if cancel_url is not None:
            return await _cancel(frontier, cancel_url)
        rows = await Recurring(frontier).waiting(limit)
        counters = await frontier.counters()
    if as_json:
        for row in rows:
            click.echo(json.dumps(scheduled_json(row), sort_keys=True))
    else:
        click.echo(format_scheduled(rows, counters))
    return 0


async def _cancel(frontier: Frontier, text: str) -> int:
    """Cancel by the fetch URL as the frontier stores it (WHATWG-serialised: `HTTP://A.example` finds it)."""
    from crawler.recurring import Recurring
    from crawler.urls import InvalidURL, crawl_url

    try:
        url = crawl_url(text.strip())
    except InvalidURL as exc:
        raise ConfigError(f"--cancel: invalid URL: {exc}") from None
    stopped, pending = await Recurring(frontier).cancel(url.url)
    if stopped:
        click.echo(f"cancelled {url.url}")
    elif pending:
        click.echo(f"cancelled {url.url} (its pass in progress is the last)")
    else:
        raise ConfigError(f"{url.url} does not recur in this crawl")
    return 0


# ------------------------------------------------------------------------------------------------------- dead
@main.command(cls=TableCommand)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: url, depth, attempts, at, error.")
@click.option("--requeue", is_flag=True, help="Put every dead URL back in the queue with a fresh attempt count.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1), help="Entries to list at most.")
@common_options
def dead(as_json: bool, requeue: bool, limit: int, **common: Any) -> None:
    """Dead-lettered URLs with their last error."""
    settings = _settings()
    sys.exit(run_async(_dead(settings, as_json, requeue, limit)))


async def _dead(settings: Settings, as_json: bool, requeue: bool, limit: int) -> int:
    from crawler.connection import open_redis
    from crawler.frontier import Frontier

    async with open_redis(settings.redis_url, settings.home) as redis:
        frontier = Frontier(redis, settings.crawl_name)
        if requeue:
            n = await frontier.requeue_dead()
            click.echo(f"requeued={n}")
            return 0
        entries = await frontier.dead_entries(limit)
    if not entries and not as_json:
        from crawler.views import describe_crawl

        click.echo(f"no dead URLs in {describe_crawl(settings)}")
    for e in entries:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "url": e.url,
                        "depth": e.depth,
                        "attempts": e.attempts,
                        "at": e.at_ms / 1000,
                        "error": e.error,
                    }
                )
            )
        else:
            err = e.error.get("kind", "?") + (f": {e.error['message']}" if e.error.get("message") else "")
            click.echo(f"{e.url}\tattempts={e.attempts}\t{err}")
    return 0


# ------------------------------------------------------------------------------------------------------ purge
@main.command(cls=TableCommand)
@click.option("--yes", is_flag=True, help="Really delete every key of the crawl.")
@common_options
def purge(yes: bool, **common: Any) -> None:
    """Remove all of a crawl's keys (frontier, dedup set, counters, dead letters)."""
    settings = _settings()
    if not yes:
        _fail(f"purge deletes every key of crawl {settings.crawl_name!r}; add --yes to confirm")
    sys.exit(run_async(_purge(settings)))


async def _purge(settings: Settings) -> int:
    from crawler.connection import open_redis
    from crawler.frontier import Frontier

    async with open_redis(settings.redis_url, settings.home) as redis:
        n = await Frontier(redis, settings.crawl_name).purge()
    click.echo(f"removed {n} keys of crawl {settings.crawl_name!r}")
    return 0


# -------------------------------------------------------------------------------------------------- monitoring
@main.command(cls=TableCommand)
@click.option("--json", "as_json", is_flag=True)
@common_options
def workers(as_json: bool, **common: Any) -> None:
    """Live workers (from their heartbeats)."""
    settings = _settings()
    sys.exit(run_async(_workers(settings, as_json)))


async def _workers(settings: Settings, as_json: bool) -> int:
    from crawler.connection import open_redis
    from crawler.heartbeat import live_workers

    async with open_redis(settings.redis_url, settings.home) as redis:
        rows = await live_workers(redis, settings.crawl_name)
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
    else:
        for w in rows:
            click.echo(
                f"{w['id']}\thost={w.get('host')}\tpid={w.get('pid')}\tpages/s={w.get('pages_per_s')}"
                f"\tinflight={w.get('inflight')}\trss_mb={w.get('rss_mb')}"
            )
        if not rows:
            click.echo("no live workers")
    return 0


@main.command(cls=TableCommand)
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1), help="Refresh seconds.")
@common_options
def top(interval: float, **common: Any) -> None:
    """Live view of the crawl: rates, queue, workers, proxies. q or Ctrl-C quits."""
    settings = _settings()
    from crawler.views import run_top

    sys.exit(run_async(run_top(settings, interval)))
