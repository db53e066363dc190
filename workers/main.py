"""The worker process: uvloop, resources, the engine and its stages, and a clean exit code.

Exit codes: 0 stopped cleanly (signal, --until-idle, --max-pages); 1 an internal error stopped a stage; 2 a
configuration error (bad setting, unreadable file, a parser that cannot be imported); 3 the gateway refused our
credentials repeatedly; 4 Redis was still unreachable after --redis-wait. Only 1 and 4 are worth restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from crawler import __version__
from crawler.backoff import Backoff
from crawler.connection import open_redis
from crawler.errors import ConfigError, CrawlError, RedisUnavailable
from crawler.fetch import make_fetcher
from crawler.frontier import Frontier, Politeness
from crawler.gateway_slots import GatewaySlots
from crawler.logs import EventLog, install_logging
from crawler.metrics import WorkerMetrics
from crawler.prometheus import start_metrics_server
from crawler.proxies import ProxyPool
from crawler.redact import scrub
from crawler.scrape import load_parser
from crawler.settings import Settings
from crawler.sinks import ItemSink, JsonlSink, Outputs
from crawler.ssrf import TrustCache
from crawler.warc import WarcWriter
from workers import signals
from workers.engine import Engine
from workers.parse_pool import ParsePool, tune_gc

PARSE_BACKLOG_BYTES = 32 * 1024 * 1024
EXIT_CONFIG = 2
EXIT_REDIS = 4
FDS_PER_FETCH = 2  # the connection, plus headroom for DNS, Redis, the parse pool's pipes


def raise_nofile_limit(concurrency: int) -> int:
    """Raise the soft open-file limit toward the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = concurrency * FDS_PER_FETCH + 256
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft


def run_worker(settings: Settings, out: Any = None) -> int:
    """Run one worker until it stops; returns the process exit code (see the module docstring)."""
    log = EventLog(settings.worker_id, settings.output.log_format, out or sys.stderr, settings.secrets())
    install_logging(log)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
        runner = asyncio.run
    try:
        return int(runner(_main(settings, log)))
    except RedisUnavailable as exc:
        _fatal(log, settings, f"{exc}: gave up after --redis-wait {settings.lifecycle.redis_wait_s:g}s")
        return EXIT_REDIS
    except CrawlError as exc:
        _fatal(log, settings, str(exc))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _fatal(log: EventLog, settings: Settings, message: str) -> None:
    """The one line a fatal start-up error gets: `crawl: error: ...` as every command prints it, or a JSON line."""
    if settings.output.log_format == "json":
        log.say(message, "error")
    else:
        print(f"crawl: error: {scrub(message, settings.secrets())}", file=sys.stderr, flush=True)


async def redis_when_up(stack: contextlib.AsyncExitStack, settings: Settings, log: EventLog) -> aioredis.Redis:
    """The frontier's Redis, waited for at start (bounded by --redis-wait, one line per attempt): in a fleet the
    workers may start before Redis does, and that is not a configuration error. Closed with `stack`."""
    backoff = Backoff(first_s=0.5, cap_s=5.0)
    deadline = time.monotonic() + settings.lifecycle.redis_wait_s
    while True:
        try:
            return await stack.enter_async_context(open_redis(settings.redis_url, settings.home))
        except RedisUnavailable as exc:
            wait = backoff.failed()
            if time.monotonic() + wait > deadline:
                raise
            log.say(f"{exc}; waiting for it (retrying in {wait:.1f}s)", "warning")
            await backoff.wait()


def _metrics(settings: Settings) -> WorkerMetrics:
    metrics = WorkerMetrics(settings.worker_id)
    port = settings.output.metrics_port
    if port is not None:
        try:
            metrics.prom = start_metrics_server(
                port, settings.output.metrics_host, worker_id=settings.worker_id, crawl_name=settings.crawl_name
            )
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: {exc.strerror or exc}") from exc
    return metrics


def _outputs(settings: Settings) -> Outputs:
    out = settings.output
    try:
        records = JsonlSink(out.dir, settings.worker_id, out.rotate_bytes)
    except OSError as exc:
        raise ConfigError(f"--output {out.dir}: {exc.strerror or exc}") from exc
    items = ItemSink(out.dir, settings.worker_id, out.rotate_bytes) if settings.parse.parser else None
    warc = None
    if out.warc_dir is not None:
        try:
            warc = WarcWriter(out.warc_dir, settings.worker_id, out.warc_rotate_bytes, f"crawl/{__version__}")
        except OSError as exc:
            raise ConfigError(f"--warc {out.warc_dir}: {exc.strerror or exc}") from exc
    return Outputs(records, items, warc)


async def _main(settings: Settings, log: EventLog) -> int:
    limit = raise_nofile_limit(settings.concurrency)
    if limit < settings.concurrency + 64:
        log.say(
            f"open-file limit {limit} is below --concurrency {settings.concurrency}; raise it with `ulimit -n`",
            "warning",
        )
    if settings.parse.parser:
        load_parser(settings.parse.parser)  # a one-line error (exit 2) before anything starts
    parse_pool = ParsePool(
        settings.parse_workers,
        PARSE_BACKLOG_BYTES,
        parser_spec=settings.parse.parser,
        timeout_s=settings.parse.timeout_s,
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            redis = await redis_when_up(stack, settings, log)
            politeness, proxy = settings.politeness, settings.proxy
            frontier = Frontier(
                redis,
                settings.crawl_name,
                Politeness(politeness.per_host_concurrency, int(politeness.per_host_delay_s * 1000)),
            )
            metrics = _metrics(settings)
            await parse_pool.warm_up()
            tune_gc()
            metrics.restart_clock()
            trust = None if settings.fetch.allow_private_networks else TrustCache(frontier.is_seed_host)
            slots = (
                GatewaySlots(redis, settings.crawl_name, settings.proxy.max_connections, settings.fetch.timeout_s + 5)
                if settings.proxy.max_connections is not None
                else None
            )
            outputs = _outputs(settings)
            out = settings.output
            fetcher = make_fetcher(
                settings,
                trust,
                slots,
                keep_body=out.warc_dir is not None and out.warc_content == "all",
                record_request_headers=out.warc_dir is not None,
                keep_truncated=out.warc_dir is not None,
            )
            async with contextlib.aclosing(fetcher):
                engine = Engine(
                    settings,
                    frontier,
                    fetcher,
                    parse_pool,
                    ProxyPool(proxy.urls, proxy.session_requests, None, proxy.gateway_failures),
                    outputs,
                    metrics,
                    log,
                    trust,
                )
                signals.install(asyncio.get_running_loop(), engine.stop)
                if metrics.prom is not None:
                    metrics.prom.bind(engine)
                    engine.say(f"Prometheus metrics on {metrics.prom.url}")
                engine.say(
                    f"worker {settings.worker_id} started: crawl={settings.crawl_name} "
                    f"concurrency={settings.concurrency} parse_workers={settings.parse_workers} "
                    f"proxies={len(settings.proxy.urls)} output={settings.output.dir}"
                )
                return await engine.run()
    finally:
        parse_pool.close()
