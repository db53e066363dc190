"""The `crawl` command line. Its options come from the table in `crawler.options`: every flag has a `CRAWL_*`
variable and a config-file key (`--config`), and flags win over variables, variables over the file.

Errors users can cause (bad flags, unreadable files, unreachable Redis) end with one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from crawler.config import env_value, param_type, resolve
from crawler.errors import ConfigError, CrawlError
from crawler.logs import EventLog, early_format
from crawler.options import BY_KEY, FRONTIER_OPTIONS, GROUPS, OPTIONS, Option
from crawler.settings import Settings

if TYPE_CHECKING:
    from crawler.frontier import Frontier

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr and a non-zero exit; a JSON line when JSON logs were asked for."""
    if early_format(sys.argv[1:], os.environ) == "json":
        EventLog("crawl", "json", sys.stderr).say(message, "error")
    else:
        click.echo(f"crawl: error: {message}", err=True)
    sys.exit(code)


def run_async(coro: Awaitable[int | None]) -> int:
    """Run a command's coroutine, turning our errors into one line and a non-zero exit."""
    try:
        return int(asyncio.run(coro) or 0)  # type: ignore[arg-type]
    except CrawlError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("crawl: interrupted", err=True)
        return 130
    return 2


class TableOption(click.Option):
    """A click option made from a row of `crawler.options`. Its default is None ("not given"): values that did
    not come from the command line are read by `crawler.config.resolve` (environment, then config file), the
    same reader `Settings.from_env()` uses. Click reads the variables too (through the same `env_value`), only so
    that `ctx.params` shows what a command will run with."""

    def __init__(self, *args: Any, row: Option, **kw: Any) -> None:
        super().__init__(*args, envvar=list(row.envvars), **kw)
        self.row = row

    def value_from_envvar(self, ctx: click.Context) -> Any:
        found = env_value(self.row, os.environ)
        return None if found is None else found[0]


def _help(row: Option) -> str:
    shown = row.shown_default()
    return f"{row.help}  [env: {', '.join(row.envvars)}{'; default: ' + shown if shown else ''}]"


def table_options(rows: Iterable[Option]) -> Callable[[F], F]:
    """Attach these rows' options, in table order."""

    def attach(f: F) -> F:
        for row in reversed(tuple(rows)):
            attrs: dict[str, Any] = {"default": None, "help": _help(row), "cls": TableOption, "row": row}
            if row.is_flag:
                attrs["is_flag"] = True
            elif not row.switch:
                attrs.update(type=param_type(row), multiple=row.multiple, metavar=row.metavar)
            f = click.option(row.flag, row.key, **attrs)(f)
        return f

    return attach


class TableCommand(click.Command):
    """`--help` shows the table's options in sections (Fetching, Politeness, ...) after the command's own."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {"Options": []}
        sections.update((title, []) for title in GROUPS.values())
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                row = param.row if isinstance(param, TableOption) else None
                sections["Options" if row is None else GROUPS[row.group]].append(record)
        for title, records in sections.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


common_options = table_options(FRONTIER_OPTIONS)


def _settings(rows: Iterable[Option] = FRONTIER_OPTIONS, **forced: Any) -> Settings:
    """Settings from these options: the command line (and `forced`), then the environment, then the config file;
    one line and exit 2 when a value is bad."""
    ctx = click.get_current_context()
    flags = {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}
    try:
        return Settings.from_resolved(resolve({**flags, **forced}, os.environ, tuple(rows)))
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="crawl")
def main() -> None:
    """A high-throughput, crash-safe scraping crawler with a Redis frontier."""


# ---------------------------------------------------------------------------------------------------- enqueue
@main.command(cls=TableCommand)
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True), required=False)
@click.option("--depth", default=0, show_default=True, type=click.IntRange(0), help="Depth of these seeds.")
@click.option(
    "--sitemap",
    "sitemaps",
    multiple=True,
    metavar="URL",
    help="A sitemap (or sitemap index) to expand into seeds (repeatable; no SOURCE needed).",
)
@click.option(
    "--priority",
    type=click.Choice(["normal", "high"]),
    default="normal",
    show_default=True,
    help="high: put these URLs at the front of their host's queue.",
)
@click.option(
    "--every",
    default=None,
    metavar="DURATION",
    help="Fetch these URLs again this long after each fetch (30s, 15m, 6h, 1d; up to 10% jitter).",
)
@table_options([BY_KEY["keep_tracking_params"]])
@common_options
def enqueue(
    source: str | None, depth: int, sitemaps: tuple[str, ...], priority: str, every: str | None, **kw: Any
) -> None:
    """Add the URLs of SOURCE (a file, or - for stdin) to the crawl: plain URL lines and JSON lines
    ({"url": ..., "data": {...}, "priority": ..., "label": ..., "kind": "sitemap", "every": "6h"}) mixed; and
    --sitemap URLs. --every makes them recurring: due again that long after each fetch."""
    settings = _settings((*FRONTIER_OPTIONS, BY_KEY["keep_tracking_params"]))
    keep_tracking = settings.scope.keep_tracking_params
    every_s = _duration("--every", every) if every is not None else None
    if source is None and not sitemaps:
        _fail("crawl enqueue needs a SOURCE file (or -), or --sitemap URL")
    code = 0
    front = priority == "high"
    if sitemaps:
        lines = "".join(json.dumps({"url": u, "kind": "sitemap"}) + "\n" for u in sitemaps).encode()
        code = run_async(_enqueue(settings, lines, depth, front, keep_tracking, every_s))
    if source is not None and not code:
        code = run_async(_enqueue(settings, source, depth, front, keep_tracking, every_s))
    sys.exit(code)


def _duration(flag: str, text: str) -> int:
    from crawler.schedule import InvalidDuration, parse_duration

    try:
        return parse_duration(text)
    except InvalidDuration as exc:
        _fail(f"{flag}: {exc}")
        raise  # unreachable


async def _enqueue(
    settings: Settings, source: str | bytes, depth: int, front: bool, keep_tracking: bool, every_s: int | None = None
) -> int:
    from crawler.connection import open_redis
    from crawler.enqueue import EnqueueProgress, InvalidLinePrinter, enqueue_stream
    from crawler.frontier import Frontier

    if source == "-":
        stream = sys.stdin.buffer
    elif isinstance(source, bytes):  # lines made here (--sitemap), not a file
        stream = io.BytesIO(source)
        source = "--sitemap"
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115, ASYNC230 - opening is instant; closed below
        except OSError as exc:
            raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from None
    printer = InvalidLinePrinter(source if source != "-" else "<stdin>")
    try:
        async with open_redis(settings.redis_url, settings.home) as redis, EnqueueProgress(stream) as progress:
            frontier = Frontier(redis, settings.crawl_name)
            report = await enqueue_stream(
                frontier, stream, depth, front, keep_tracking, printer, progress, every_s=every_s
            )
            progress(report)  # the last frame shows the final counts
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    printer.finish()
    click.echo(report.summary())
    if report.added == 0 and report.duplicates:
        from crawler.views import describe_crawl

        click.echo(
            f"crawl: note: every URL was already seen in {describe_crawl(settings)}: nothing new to fetch. "
            "To crawl them again, use another --crawl NAME, or `crawl purge --yes` first.",
            err=True,
        )
    return 0


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
    from crawler.views import format_scheduled, scheduled_json

    async with open_redis(settings.redis_url, settings.home) as redis:
        frontier = Frontier(redis, settings.crawl_name)
        if cancel_all:
            click.echo(f"cancelled={await frontier.cancel_all_recurring()} (passes in progress end at their ack)")
            return 0
        if cancel_url is not None:
            return await _cancel(frontier, cancel_url)
        rows = await frontier.scheduled(limit)
        counters = await frontier.counters()
    if as_json:
        for row in rows:
            click.echo(json.dumps(scheduled_json(row), sort_keys=True))
    else:
        click.echo(format_scheduled(rows, counters))
    return 0


async def _cancel(frontier: Frontier, text: str) -> int:
    """Cancel by the fetch URL as the frontier stores it (WHATWG-serialised: `HTTP://A.example` finds it)."""
    from crawler.urls import InvalidURL, crawl_url

    try:
        url = crawl_url(text.strip())
    except InvalidURL as exc:
        raise ConfigError(f"--cancel: invalid URL: {exc}") from None
    stopped, pending = await frontier.cancel_recurring(url.url)
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


# ----------------------------------------------------------------------------------------------------- worker
worker_options = table_options(OPTIONS)


@main.command(cls=TableCommand, name="parse")
@click.argument("target")
@click.option("--url", "base_url", default=None, help="For a saved FILE: the URL it was fetched from (links resolve).")
@click.option("--label", default=None, help="Router label to run (as a Follow(label=...) would).")
@click.option("--data", "data_json", default=None, help="User data of the URL, a JSON object.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: items, follows, error.")
@worker_options
def parse_command(
    target: str, base_url: str | None, label: str | None, data_json: str | None, as_json: bool, **kw: Any
) -> None:
    """Run --parser once on TARGET (a live URL, through the configured proxy, or a saved HTML file) and print the
    items and follow requests it yields: develop a parser without a crawl. Exit 1 when the page or parser failed."""
    settings = _settings(OPTIONS)
    if not settings.parse.parser:
        _fail("crawl parse needs --parser module:function (or CRAWL_PARSER)")
    data: dict[str, Any] | None = None
    if data_json is not None:
        try:
            data = json.loads(data_json)
        except ValueError as exc:
            _fail(f"--data is not JSON: {exc}")
        if not isinstance(data, dict):
            _fail("--data must be a JSON object")
    sys.exit(run_async(_parse_once(settings, target, base_url, data, label, as_json)))


async def _parse_once(
    settings: Settings, target: str, base_url: str | None, data: dict[str, Any] | None, label: str | None, as_json: bool
) -> int:
    from crawler.parse_once import format_outcome, parse_once

    assert settings.parse.parser is not None
    outcome = await parse_once(target, settings.parse.parser, settings, base_url=base_url, data=data, label=label)
    click.echo(format_outcome(outcome, as_json))
    return 0 if outcome.ok else 1


@main.command(cls=TableCommand)
@worker_options
def worker(**kw: Any) -> None:
    """Lease URLs from the crawl's frontier, fetch, parse, write results; run as many as you like."""
    settings = _settings(OPTIONS)
    from workers.main import run_worker

    sys.exit(run_worker(settings))


@main.command(cls=TableCommand)
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--depth", default=0, show_default=True, type=click.IntRange(0), help="Depth of these seeds.")
@worker_options
def run(source: str, depth: int, **kw: Any) -> None:
    """Enqueue SOURCE and crawl until the frontier is idle (one command, embedded Redis by default)."""
    settings = _settings(OPTIONS, until_idle=True)
    code = run_async(_enqueue(settings, source, depth, False, settings.scope.keep_tracking_params))
    if code:
        sys.exit(code)
    from workers.main import run_worker

    sys.exit(run_worker(settings))


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


def entry() -> None:  # pragma: no cover - console script shim for `python -m crawler`
    main(prog_name=os.path.basename(sys.argv[0]) or "crawl")
