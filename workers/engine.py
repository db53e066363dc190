"""The worker's engine: builds the stages, runs them, and stops them in a named order.

    Leaser ──▶ local queue ──▶ FetchTasks × concurrency (Processor: SSRF, robots, attempts, parse) ──▶ Outcome
      ▲                                                                                                │
      └──── capacity freed ◀── Committer: write + flush records, then one settle round trip ◀──────────┘
    Housekeeping beside them: renew, reclaim, heartbeat, throughput lines; the loop-lag monitor.

The engine holds no work of its own: each stage owns its state. It owns the one backpressure predicate
(`needs_backout`), the stop reason and exit code, and the shutdown sequence, which waits for stages by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Coroutine
from typing import Any

from crawler.connection import on_reconnect
from crawler.errors import RedisUnavailable
from crawler.fetch_base import FetcherLike
from crawler.frontier import Frontier
from crawler.heartbeat import remove_heartbeat
from crawler.logs import EventLog
from crawler.metrics import WorkerMetrics, monitor_loop_lag
from crawler.proxies import ProxyPool
from crawler.redact import scrub
from crawler.settings import Settings
from crawler.sinks import Outputs
from crawler.ssrf import TrustCache
from workers.committer import Committer
from workers.housekeeping import Housekeeping
from workers.leaser import Leaser
from workers.parse_pool import ParsePool
from workers.processing import FetchTasks, Processor


def consumer_token(worker_id: str) -> str:
    """A fresh token per process: a restarted worker with the same id never owns its predecessor's leases."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in worker_id) + "." + secrets.token_hex(3)


class Engine:
    def __init__(
        self,
        settings: Settings,
        frontier: Frontier,
        fetcher: FetcherLike,
        parse_pool: ParsePool,
        proxies: ProxyPool,
        outputs: Outputs,
        metrics: WorkerMetrics,
        log: EventLog,
        trust: TrustCache | None = None,
    ) -> None:
        self.s = settings
        self.frontier = frontier
        self.parse_pool = parse_pool
        self.proxies = proxies
        self.metrics = metrics
        self.log = log
        self.token = consumer_token(settings.worker_id)
        self._secrets = settings.secrets()
        self.stopping = asyncio.Event()  # stop leasing; in-flight work finishes within the grace period
        self._closed = asyncio.Event()  # everything is settled: housekeeping loops leave
        self.stop_reason = ""
        self.exit_code = 0
        self.processor = Processor(
            settings, fetcher, parse_pool, proxies, metrics, trust, self.stop, self.say, frontier.set_host_delay
        )
        self.leaser = Leaser(
            frontier,
            self.token,
            concurrency=settings.concurrency,
            batch=settings.lease_batch,
            ttl_s=settings.lifecycle.lease_ttl_s,
            max_pages=settings.lifecycle.max_pages,
            until_idle=settings.lifecycle.until_idle,
            needs_backout=self.needs_backout,
            has_unsettled=lambda: self.committer.unsettled(),
            busy=lambda: self.tasks.busy,
            warn=lambda m: self.say(m, "warning"),
            idle_horizon_s=settings.lifecycle.idle_horizon_s,
        )
        self.committer = Committer(
            frontier, outputs, self.leaser.book, metrics, self.leaser.capacity.set, self._redis_error, self.say
        )
        self.tasks = FetchTasks(self.processor, self.leaser.queue, self.committer.submit)
        # a new Redis connection may reach a restarted or replaced server: forget what Redis may have lost
        on_reconnect(frontier.redis, self.processor.seen.clear)
        self.housekeeping = Housekeeping(
            settings,
            frontier,
            self.leaser.book,
            metrics,
            proxies,
            self._gauges,
            self.emit,
            self.say,
            self.processor.seen.clear,
        )

    def __repr__(self) -> str:
        return (
            f"Engine(token={self.token}, {self.leaser!r}, {self.tasks!r}, {self.committer!r}, "
            f"stopping={self.stopping.is_set()})"
        )

    # -- control --------------------------------------------------------------------------------------------
    def stop(self, reason: str, exit_code: int = 0) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.exit_code = exit_code
            self.stopping.set()
            self.leaser.stop()

    def needs_backout(self) -> bool:
        """The one backpressure predicate: lease nothing while any of these is true."""
        return (
            self.stopping.is_set()
            or self.proxies.all_down()
            or self.parse_pool.backlog > self.parse_pool.backlog_limit
            or self.committer.backlogged()
            or self.leaser.budget_spent()
        )

    def _redis_error(self, exc: RedisUnavailable, wait_s: float) -> None:
        self.processor.seen.clear()  # Redis may have lost links this cache vouches for
        self.say(
            f"Redis unavailable while acking ({exc.cause_name}); the records are written; retrying in {wait_s:.1f}s",
            "warning",
        )

    def _gauges(self) -> dict[str, Any]:
        return {"inflight": self.tasks.busy, "parse_backlog": self.parse_pool.backlog}

    # -- output ---------------------------------------------------------------------------------------------
    def emit(self, obj: dict[str, Any]) -> None:
        """A throughput line or the summary (a metrics snapshot with its own `event`)."""
        self.log.record(obj)

    def say(self, message: str, level: str = "info") -> None:
        self.log.say(message, level)

    # -- running --------------------------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until stopped (signal, --until-idle, --max-pages, fatal gateway error); returns the exit code."""
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        leaser = self._spawn(self.leaser.run(), "lease")
        leaser.add_done_callback(lambda _t: self.stop(self.leaser.stop_reason) if self.leaser.stop_reason else None)
        fetchers = [self._spawn(self.tasks.run_one(), f"fetch-{i}") for i in range(self.s.concurrency)]
        committer = self._spawn(self.committer.run(), "commit")
        housekeeping = [
            self._spawn(self.housekeeping.renew(self._closed), "renew"),
            self._spawn(self.housekeeping.reclaim(self.stopping), "reclaim"),
            self._spawn(self.housekeeping.report(self._closed), "report"),
            self._spawn(self.housekeeping.probe_gateways(self.stopping, self.leaser.capacity.set), "probe"),
        ]
        lag = self._spawn(monitor_loop_lag(self.metrics), "lag")
        try:
            await self.stopping.wait()
        finally:
            self.say(
                f"stopping: {self.stop_reason}; {self.tasks.busy} fetches in flight, "
                f"{len(self.leaser.book)} leases held"
            )
            await self._stop_leaser(leaser)
            await self._drain_fetchers(fetchers)
            await self._stop_committer(committer)
            await self._final_commit()
            await self._stop_housekeeping(housekeeping, lag)
            await self.housekeeping.flush_traffic()
            with contextlib.suppress(RedisUnavailable):
                await remove_heartbeat(self.frontier.redis, self.s.crawl_name, self.s.worker_id)
            summary = self.metrics.summary(self.proxies.success_rate())
            if self.committer.outputs.warc is not None:
                summary["warc"] = self.committer.outputs.warc.stats()
            self.emit(summary)
        return self.exit_code

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._died)
        self._tasks[name] = task
        return task

    def _died(self, task: asyncio.Task[Any]) -> None:
        """A loop that dies must stop the worker (exit 1), not leave it running and doing nothing."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.say(f"internal error in the {task.get_name()} loop: {scrub(repr(exc), self._secrets)[:300]}", "error")
        self.stop(f"the {task.get_name()} loop failed", 1)

    async def _stop_leaser(self, leaser: asyncio.Task[Any]) -> None:
        """The leaser leaves by itself (stop() woke it): cancelling it mid-call would orphan a leased batch."""
        await _wait_or_cancel([leaser], max(5.0, self.s.lifecycle.lease_ttl_s / 3))
        self.leaser.drop_unstarted()  # still in the book: handed back by the final commit

    async def _drain_fetchers(self, fetchers: list[asyncio.Task[Any]]) -> None:
        """In-flight fetches get the grace period to finish; then they are cancelled (their leases handed back)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.tasks.idle.wait(), self.s.lifecycle.grace_s)
        for t in fetchers:
            t.cancel()
        await asyncio.gather(*fetchers, return_exceptions=True)

    async def _stop_committer(self, committer: asyncio.Task[Any]) -> None:
        """The committer finishes the commit it is in; stuck against an absent Redis, it is cancelled (its
        written results stay in `written` for the final commit)."""
        self.committer.close()
        await _wait_or_cancel([committer], max(10.0, self.s.lifecycle.grace_s))

    async def _final_commit(self) -> None:
        """Commit what finished; give back every lease still held, without counting an attempt."""
        finished = self.committer.finished_members()
        unfinished = [ls for ls in self.leaser.book.leases() if ls.member not in finished]
        give_up_at = time.monotonic() + max(10.0, self.s.lifecycle.grace_s)
        if not await self.committer.final(unfinished, give_up_at):
            self.say(
                f"Redis stayed unavailable: {len(self.committer.written)} written results not acked and "
                f"{len(unfinished)} leases not handed back; they expire in {self.s.lifecycle.lease_ttl_s:.0f}s and are "
                "fetched again (duplicates, never losses)",
                "warning",
            )

    async def _stop_housekeeping(self, loops: list[asyncio.Task[Any]], lag: asyncio.Task[Any]) -> None:
        self._closed.set()  # renew and report loops leave on their own; cancel is only a backstop
        lag.cancel()  # the lag monitor only sleeps: nothing to finish
        await _wait_or_cancel(loops, 2.0)
        await asyncio.gather(lag, return_exceptions=True)


async def _wait_or_cancel(tasks: list[asyncio.Task[Any]], timeout_s: float) -> None:
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for t in late:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
