"""The worker process: uvloop, resources, the engine and its stages, and a clean exit code.

Exit codes: 0 stopped cleanly (signal, --until-idle, --max-pages), 2 configuration or Redis unreachable at start,
3 the gateway refused our credentials repeatedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import sys
from typing import Any

from crawler.connection import open_redis
from crawler.errors import ConfigError, CrawlError
from crawler.fetch import Fetcher, make_session
from crawler.frontier import Frontier, Politeness
from crawler.gateway_slots import GatewaySlots
from crawler.metrics import WorkerMetrics
from crawler.proxies import ProxyPool
from crawler.redact import scrub
from crawler.settings import Settings
from crawler.sinks import JsonlSink
from crawler.ssrf import TrustCache
from workers import signals
from workers.engine import Engine
from workers.parse_pool import ParsePool

PARSE_BACKLOG_BYTES = 32 * 1024 * 1024
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


def tune_gc() -> None:
    """Fewer, cheaper cyclic collections: freeze what start-up allocated (modules, the settings, the session), so
    collections never scan it again, and collect the young generation every 50,000 allocations rather than 700.
    Measured in docs/benchmarks.md: at 256 fetches in flight the default collector took 13% of the CPU."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run_worker(settings: Settings, out: Any = None) -> int:
    """Run one worker until it stops; returns the process exit code."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
        runner = asyncio.run
    try:
        return int(runner(_main(settings, out)))
    except CrawlError as exc:
        print(f"crawl: error: {scrub(str(exc), settings.secrets())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _main(settings: Settings, out: Any) -> int:
    limit = raise_nofile_limit(settings.concurrency)
    if limit < settings.concurrency + 64:
        print(
            f"crawl: warning: open-file limit {limit} is below --concurrency {settings.concurrency}; "
            "raise it with `ulimit -n`",
            file=sys.stderr,
        )
    parse_pool = ParsePool(settings.parse.workers, PARSE_BACKLOG_BYTES)
    try:
        async with open_redis(settings.redis_url, settings.home) as redis:
            frontier = Frontier(
                redis,
                settings.crawl_name,
                Politeness(settings.politeness.per_host_concurrency, int(settings.politeness.per_host_delay_s * 1000)),
            )
            metrics = WorkerMetrics(settings.worker_id)
            if settings.output.metrics_port is not None:
                from crawler.prometheus import PromMetrics

                try:
                    metrics.prom = PromMetrics(settings.output.metrics_port)
                except OSError as exc:
                    raise ConfigError(f"--metrics-port {settings.output.metrics_port}: {exc.strerror or exc}") from None
            await parse_pool.warm_up()
            tune_gc()
            metrics.restart_clock()
            trust = None if settings.fetch.allow_private_networks else TrustCache(frontier.is_seed_host)
            slots = (
                GatewaySlots(redis, settings.crawl_name, settings.proxy.max_connections, settings.fetch.timeout_s + 5)
                if settings.proxy.max_connections is not None
                else None
            )
            try:
                sink = JsonlSink(settings.output.dir, settings.worker_id, settings.output.rotate_bytes)
            except OSError as exc:
                raise ConfigError(f"--output {settings.output.dir}: {exc.strerror or exc}") from None
            async with make_session(settings, trust) as session:
                engine = Engine(
                    settings,
                    frontier,
                    Fetcher(session, settings, slots, trust),
                    parse_pool,
                    ProxyPool(settings.proxy.urls, settings.proxy.session_requests, None),
                    sink,
                    metrics,
                    out,
                    trust,
                )
                signals.install(asyncio.get_running_loop(), engine.stop)
                if metrics.prom is not None:
                    metrics.prom.bind(engine)
                    engine.say(f"Prometheus metrics on http://0.0.0.0:{metrics.prom.port}/metrics")
                engine.say(
                    f"worker {settings.worker_id} started: crawl={settings.crawl_name} "
                    f"concurrency={settings.concurrency} parse_workers={settings.parse.workers} "
                    f"proxies={len(settings.proxy.urls)} output={settings.output.dir}"
                )
                return await engine.run()
    finally:
        parse_pool.close()
