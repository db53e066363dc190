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
    pass

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


def entry() -> None:  # pragma: no cover - console script shim for `python -m crawler`
    main(prog_name=os.path.basename(sys.argv[0]) or "crawl")


from crawler import cli_inspect  # noqa: E402, F401 - registers stats, schedule, dead, purge, workers, top on `main`
