"""The `crawl` command line. Every flag has a `CRAWL_*` environment equivalent; flags win over the environment.

Errors users can cause (bad flags, unreadable files, unreachable Redis) end with one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from crawler.errors import ConfigError, CrawlError
from crawler.settings import DEFAULT_USER_AGENT, Settings, default_parse_workers, load_extract_rules

F = TypeVar("F", bound=Callable[..., Any])


if TYPE_CHECKING:  # click is generic in its stubs only from 8.2 on; keep runtime compatible with older ones
    _StrParamType = click.ParamType[str]
else:
    _StrParamType = click.ParamType


class PipeSeparated(_StrParamType):
    """A string option whose environment variable holds several values separated by '|' (not whitespace)."""

    name = "text"
    envvar_list_splitter = "|"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return str(value)


PIPE_SEPARATED = PipeSeparated()


def _fail(message: str, code: int = 2) -> None:
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


def common_options(f: F) -> F:
    """--redis, --crawl, --home: where the frontier is."""
    f = click.option(
        "--home",
        envvar="CRAWL_HOME",
        default=".crawl",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Directory of the embedded Redis (used when no --redis is given).",
    )(f)
    f = click.option(
        "--crawl",
        "crawl_name",
        envvar="CRAWL_NAME",
        default="default",
        show_default=True,
        help="Crawl namespace.",
    )(f)
    f = click.option(
        "--redis",
        "redis_url",
        envvar=["CRAWL_REDIS_URL", "REDIS_URL"],
        default=None,
        help="Redis URL (redis://, rediss://, unix://). Default: an embedded Redis under --home.",
    )(f)
    return f


def _settings(**kw: Any) -> Settings:
    try:
        return Settings(**kw)
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="crawl")
def main() -> None:
    """A high-throughput, crash-safe scraping crawler with a Redis frontier."""


# ---------------------------------------------------------------------------------------------------- enqueue
@main.command()
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--depth", default=0, show_default=True, type=click.IntRange(0), help="Depth of these seeds.")
@click.option(
    "--priority",
    type=click.Choice(["normal", "high"]),
    default="normal",
    show_default=True,
    help="high: put these URLs at the front of their host's queue.",
)
@click.option(
    "--keep-tracking-params",
    is_flag=True,
    envvar="CRAWL_KEEP_TRACKING_PARAMS",
    help="Keep utm_*, fbclid, ...",
)
@common_options
def enqueue(source: str, depth: int, priority: str, keep_tracking_params: bool, **common: Any) -> None:
    """Add the URLs of SOURCE (a file, or - for stdin), one per line, to the crawl."""
    settings = _settings(**common)
    sys.exit(run_async(_enqueue(settings, source, depth, priority == "high", keep_tracking_params)))


async def _enqueue(settings: Settings, source: str, depth: int, front: bool, keep_tracking: bool) -> int:
    from crawler.connection import open_redis
    from crawler.enqueue import InvalidLinePrinter, enqueue_stream
    from crawler.frontier import Frontier

    if source == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = open(source, "rb")  # noqa: SIM115, ASYNC230 - opening is instant; closed below
        except OSError as exc:
            raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from None
    printer = InvalidLinePrinter(source if source != "-" else "<stdin>")
    show_progress = sys.stderr.isatty()

    def progress(r: Any) -> None:
        if show_progress:
            print(f"\r{r.lines:,} lines, {r.added:,} added", end="", file=sys.stderr, flush=True)

    try:
        async with open_redis(settings.redis_url, settings.home) as redis:
            frontier = Frontier(redis, settings.crawl_name)
            report = await enqueue_stream(frontier, stream, depth, front, keep_tracking, printer, progress)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if show_progress:
        print(file=sys.stderr)
    printer.finish()
    click.echo(report.summary())
    return 0


# ------------------------------------------------------------------------------------------------------ stats
@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
@common_options
def stats(as_json: bool, **common: Any) -> None:
    """Crawl-wide counters: enqueued = done + dead + queued + deferred + inflight."""
    settings = _settings(**common)
    sys.exit(run_async(_stats(settings, as_json)))


async def _stats(settings: Settings, as_json: bool) -> int:
    from crawler.connection import open_redis
    from crawler.views import crawl_snapshot, format_snapshot

    async with open_redis(settings.redis_url, settings.home) as redis:
        snap = await crawl_snapshot(redis, settings.crawl_name)
    if as_json:
        click.echo(json.dumps(snap, sort_keys=True))
    else:
        click.echo(format_snapshot(snap))
    return 0


# ------------------------------------------------------------------------------------------------------- dead
@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON lines: url, depth, attempts, at, error.")
@click.option("--requeue", is_flag=True, help="Put every dead URL back in the queue with a fresh attempt count.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1), help="Entries to list at most.")
@common_options
def dead(as_json: bool, requeue: bool, limit: int, **common: Any) -> None:
    """Dead-lettered URLs with their last error."""
    settings = _settings(**common)
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
@main.command()
@click.option("--yes", is_flag=True, help="Really delete every key of the crawl.")
@common_options
def purge(yes: bool, **common: Any) -> None:
    """Remove all of a crawl's keys (frontier, dedup set, counters, dead letters)."""
    settings = _settings(**common)
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
def worker_options(f: F) -> F:
    opts = [
        click.option(
            "--concurrency",
            envvar="CRAWL_CONCURRENCY",
            default=64,
            show_default=True,
            type=int,
            help="Fetches in flight in this process.",
        ),
        click.option(
            "--proxy",
            "proxies",
            envvar="CRAWL_PROXY_URL",
            multiple=True,
            help="Gateway URL http://user:pass@host:port (repeatable); {session} in the user is a sticky session.",
        ),
        click.option(
            "--proxy-file",
            envvar="CRAWL_PROXY_FILE",
            default=None,
            help="File of gateway URLs, one per line.",
        ),
        click.option(
            "--session-requests",
            envvar="CRAWL_SESSION_REQUESTS",
            default=0,
            show_default=True,
            type=int,
            help="Rotate the sticky session after N requests (0: only on ban signals).",
        ),
        click.option(
            "--ban-marker",
            "ban_markers",
            envvar="CRAWL_BAN_MARKERS",
            multiple=True,
            type=PIPE_SEPARATED,
            help="Body text that means 'blocked': rotate the session and retry (repeatable; in CRAWL_BAN_MARKERS "
            "separate markers with '|', as they may contain spaces).",
        ),
        click.option(
            "--proxy-max-connections",
            envvar="CRAWL_PROXY_MAX_CONNECTIONS",
            default=None,
            type=int,
            help="Connections through the gateway for the whole crawl (all workers), via Redis.",
        ),
        click.option(
            "--parse-workers",
            envvar="CRAWL_PARSE_WORKERS",
            default=default_parse_workers(),
            show_default="cores - 1",
            type=int,
            help="Parse processes.",
        ),
        click.option(
            "--output",
            "output_dir",
            envvar="CRAWL_OUTPUT",
            default="crawl-output",
            show_default=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Directory of <worker-id>.jsonl files.",
        ),
        click.option(
            "--rotate-mb",
            envvar="CRAWL_ROTATE_MB",
            default=256,
            show_default=True,
            type=int,
            help="Start a new output file past this size.",
        ),
        click.option("--worker-id", envvar="CRAWL_WORKER_ID", default=None, help="Default: <hostname>-<pid>."),
        click.option(
            "--until-idle",
            envvar="CRAWL_UNTIL_IDLE",
            is_flag=True,
            help="Exit 0 when nothing is queued, deferred or in flight crawl-wide.",
        ),
        click.option("--max-pages", envvar="CRAWL_MAX_PAGES", default=None, type=int, help="Stop after N pages."),
        click.option(
            "--follow/--no-follow",
            envvar="CRAWL_FOLLOW",
            default=True,
            show_default=True,
            help="Add in-scope links to the frontier.",
        ),
        click.option(
            "--max-depth",
            envvar="CRAWL_MAX_DEPTH",
            default=None,
            type=int,
            help="Deepest link depth followed.",
        ),
        click.option(
            "--allow-domain",
            "allow_domains",
            envvar="CRAWL_ALLOW_DOMAINS",
            multiple=True,
            help="Also follow links to this domain and its subdomains (repeatable).",
        ),
        click.option(
            "--per-host-concurrency",
            envvar="CRAWL_PER_HOST_CONCURRENCY",
            default=8,
            show_default=True,
            type=int,
            help="Leases of one host at once, crawl-wide (0: unlimited).",
        ),
        click.option(
            "--per-host-delay",
            "per_host_delay_s",
            envvar="CRAWL_PER_HOST_DELAY",
            default=0.0,
            show_default=True,
            type=float,
            help="Seconds between two leases of one host, crawl-wide.",
        ),
        click.option(
            "--robots/--no-robots",
            envvar="CRAWL_ROBOTS",
            default=True,
            show_default=True,
            help="Honour robots.txt.",
        ),
        click.option("--user-agent", envvar="CRAWL_USER_AGENT", default=DEFAULT_USER_AGENT, show_default=True),
        click.option(
            "--keep-tracking-params",
            envvar="CRAWL_KEEP_TRACKING_PARAMS",
            is_flag=True,
            help="Keep utm_*, fbclid, gclid in followed links.",
        ),
        click.option(
            "--allow-private-networks",
            envvar="CRAWL_ALLOW_PRIVATE_NETWORKS",
            is_flag=True,
            help="Follow links to private, loopback and link-local addresses.",
        ),
        click.option(
            "--max-body-bytes",
            envvar="CRAWL_MAX_BODY_BYTES",
            default=10 * 1024 * 1024,
            show_default=True,
            type=int,
            help="Body cap (decompressed).",
        ),
        click.option(
            "--timeout",
            "timeout_s",
            envvar="CRAWL_TIMEOUT",
            default=30.0,
            show_default=True,
            type=float,
            help="Total seconds per attempt.",
        ),
        click.option("--max-redirects", envvar="CRAWL_MAX_REDIRECTS", default=10, show_default=True, type=int),
        click.option(
            "--max-links",
            "max_links_per_page",
            envvar="CRAWL_MAX_LINKS",
            default=1000,
            show_default=True,
            type=int,
            help="Links kept per page.",
        ),
        click.option(
            "--retries",
            envvar="CRAWL_RETRIES",
            default=3,
            show_default=True,
            type=int,
            help="Retries after the first attempt.",
        ),
        click.option(
            "--extract",
            envvar="CRAWL_EXTRACT",
            default=None,
            help="JSON file of field -> CSS selector; results go to the record's data.",
        ),
        click.option(
            "--grace-s",
            envvar="CRAWL_GRACE_S",
            default=20.0,
            show_default=True,
            type=float,
            help="Seconds to finish in-flight work on SIGTERM.",
        ),
        click.option(
            "--lease-ttl-s",
            envvar="CRAWL_LEASE_TTL_S",
            default=30.0,
            show_default=True,
            type=float,
            help="Lease time-out (renewed while a fetch runs).",
        ),
        click.option(
            "--log-interval",
            "log_interval_s",
            envvar="CRAWL_LOG_INTERVAL",
            default=10.0,
            show_default=True,
            type=float,
            help="Seconds between throughput lines.",
        ),
        click.option(
            "--log-format",
            envvar="CRAWL_LOG_FORMAT",
            default="text",
            show_default=True,
            type=click.Choice(["text", "json"]),
        ),
        click.option(
            "--heartbeat-ttl-s",
            envvar="CRAWL_HEARTBEAT_TTL_S",
            default=15.0,
            show_default=True,
            type=float,
            help="A worker that stops heartbeating leaves `crawl workers` after this.",
        ),
        click.option(
            "--metrics-port",
            envvar="CRAWL_METRICS_PORT",
            default=None,
            type=int,
            help="Serve Prometheus /metrics on this port.",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return common_options(f)


def _worker_settings(kw: dict[str, Any]) -> Settings:
    from crawler.proxies import read_proxy_file

    try:
        proxies = tuple(p for item in kw.pop("proxies") for p in item.split())
        proxy_file = kw.pop("proxy_file")
        if proxy_file:
            proxies += read_proxy_file(proxy_file)
        extract = kw.pop("extract")
        rules = load_extract_rules(extract) if extract else ()
        rotate_mb = kw.pop("rotate_mb")
        worker_id = kw.pop("worker_id")
        extra: dict[str, Any] = {"worker_id": worker_id} if worker_id else {}
        if rotate_mb <= 0:
            raise ConfigError(f"--rotate-mb must be > 0, got {rotate_mb}")
        return Settings(
            proxies=proxies,
            extract_rules=rules,
            output_rotate_bytes=rotate_mb * 1024 * 1024,
            ban_markers=tuple(kw.pop("ban_markers")),
            allow_domains=tuple(d.lower().strip(".") for d in kw.pop("allow_domains")),
            **extra,
            **kw,
        )
    except ConfigError as exc:
        _fail(str(exc))
        raise


@main.command()
@worker_options
def worker(**kw: Any) -> None:
    """Lease URLs from the crawl's frontier, fetch, parse, write results; run as many as you like."""
    settings = _worker_settings(kw)
    from workers.main import run_worker

    sys.exit(run_worker(settings))


@main.command()
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--depth", default=0, show_default=True, type=click.IntRange(0), help="Depth of these seeds.")
@worker_options
def run(source: str, depth: int, **kw: Any) -> None:
    """Enqueue SOURCE and crawl until the frontier is idle (one command, embedded Redis by default)."""
    kw["until_idle"] = True
    settings = _worker_settings(kw)
    code = run_async(_enqueue(settings, source, depth, False, settings.keep_tracking_params))
    if code:
        sys.exit(code)
    from workers.main import run_worker

    sys.exit(run_worker(settings))


# -------------------------------------------------------------------------------------------------- monitoring
@main.command()
@click.option("--json", "as_json", is_flag=True)
@common_options
def workers(as_json: bool, **common: Any) -> None:
    """Live workers (from their heartbeats)."""
    settings = _settings(**common)
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


@main.command()
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1), help="Refresh seconds.")
@common_options
def top(interval: float, **common: Any) -> None:
    """Live view of the crawl: rates, queue, workers, proxies. q or Ctrl-C quits."""
    settings = _settings(**common)
    from crawler.views import run_top

    sys.exit(run_async(run_top(settings, interval)))


def entry() -> None:  # pragma: no cover - console script shim for `python -m crawler`
    main(prog_name=os.path.basename(sys.argv[0]) or "crawl")
