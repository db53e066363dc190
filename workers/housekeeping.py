"""Beside the stages: renew held leases, reclaim expired ones, publish the heartbeat, print throughput lines.

Each loop leaves when its event is set (never needs cancelling mid-call); errors from Redis are expected here
(an outage), so each loop just tries again at its next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from crawler.backoff import pause
from crawler.connection import redis_errors
from crawler.errors import RedisUnavailable
from crawler.frontier import Frontier, Lease
from crawler.heartbeat import publish_heartbeat
from crawler.metrics import WorkerMetrics
from crawler.proxies import SESSION_PLACEHOLDER, ProxyPool
from crawler.settings import Settings
from crawler.traffic import publish as publish_traffic
from workers.leaser import LeaseBook

RECLAIM_BATCH = 1000  # expired leases reclaimed per script call
PROBE_TICK_S = 0.1  # how often down gateways are looked at (each has its own backoff)
PROBE_TIMEOUT_S = 2.0


async def _reachable(proxy_url: str) -> bool:
    """Does the gateway accept a TCP connection? (Its credentials are not checked: a 407 is another matter.)"""
    parts = urlsplit(proxy_url.replace(SESSION_PLACEHOLDER, "s"))
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Housekeeping:
    def __init__(
        self,
        settings: Settings,
        frontier: Frontier,
        book: LeaseBook,
        metrics: WorkerMetrics,
        proxies: ProxyPool,
        status: Callable[[], dict[str, Any]],
        emit: Callable[[dict[str, Any]], None],
        say: Callable[[str, str], None],
        on_redis_replaced: Callable[[], None] = lambda: None,
    ) -> None:
        self.s = settings
        self.frontier = frontier
        self.book = book
        self.metrics = metrics
        self.proxies = proxies
        self._status = status  # the engine's live gauges for the heartbeat (inflight, parse backlog)
        self._emit = emit
        self._say = say
        self._rng = random.Random()
        self._on_redis_replaced = on_redis_replaced  # Redis restarted or failed over: it may have lost writes
        self._run_id: str | None = None

    async def renew(self, until: asyncio.Event) -> None:
        """Extend every held lease each ttl/3, through the grace period too."""
        interval = self.s.lifecycle.lease_ttl_s / 3
        while not await pause(interval, until):
            with contextlib.suppress(RedisUnavailable):
                lost = await self.renew_once()
                if lost:
                    self._say(
                        f"{len(lost)} leases were reclaimed by others while held (this worker stalled?)", "warning"
                    )

    async def renew_once(self) -> list[Lease]:
        """Extend every held lease; returns the ones really lost (not those settled while the renew ran)."""
        lost = await self.frontier.renew(self.book.leases(), self.s.lifecycle.lease_ttl_s)
        return self.book.really_lost(lost)

    async def reclaim(self, until: asyncio.Event) -> None:
        """Return expired leases of dead workers to the frontier, batch after batch while they come back full."""
        while not await pause(self.s.lifecycle.lease_ttl_s / 2 * (0.75 + self._rng.random() / 2), until):
            requeued = dead = 0
            try:
                while True:
                    r, d = await self.frontier.reclaim(self.s.max_attempts, RECLAIM_BATCH)
                    requeued, dead = requeued + r, dead + d
                    if r + d < RECLAIM_BATCH or until.is_set():
                        break
            except RedisUnavailable:
                continue
            if requeued or dead:
                self._say(
                    f"reclaimed {requeued} expired leases ({dead} dead-lettered after their last attempt)", "info"
                )

    async def probe_gateways(self, until: asyncio.Event, on_back: Callable[[], None]) -> None:
        """Probe each down gateway (a TCP connect to it) with backoff; the first success closes its breaker."""
        while not await pause(PROBE_TICK_S, until):
            now = time.monotonic()
            for st in self.proxies.states:
                if not st.breaker.probe_due(now):
                    continue
                if await _reachable(st.template):
                    downtime = st.breaker.close(time.monotonic())
                    self._say(f"gateway {st.redacted} is back up after {downtime:.1f}s; resuming", "warning")
                    on_back()
                else:
                    st.breaker.probe_failed(time.monotonic())

    async def report(self, until: asyncio.Event) -> None:
        """A throughput line every --log-interval, a heartbeat every heartbeat TTL / 3."""
        interval = min(self.s.output.log_interval_s, self.s.lifecycle.heartbeat_ttl_s / 3)
        next_line = time.monotonic() + self.s.output.log_interval_s
        while not await pause(interval, until):
            snap = None
            if time.monotonic() >= next_line:
                next_line += self.s.output.log_interval_s
                snap = self.metrics.snapshot(self.proxies.success_rate())
                if self.proxies:
                    snap["gateways_down"] = self.proxies.down_count()
                    snap["gateway_bytes"] = {st.redacted: st.bytes for st in self.proxies.states}
                if self.metrics.traffic.not_modified:
                    snap["not_modified"] = self.metrics.traffic.not_modified
                    snap["saved_bytes_estimate"] = self.metrics.traffic.saved_bytes
                self._emit(snap)
            await self._heartbeat(snap)

    async def flush_traffic(self) -> None:
        """Add this worker's new traffic (gateway bytes, 304s) to the crawl's totals; with each beat and at stop."""
        self.metrics.traffic.gateway_bytes = {st.redacted: st.bytes for st in self.proxies.states}
        with contextlib.suppress(RedisUnavailable):  # the next beat adds what this one could not
            await publish_traffic(self.frontier.redis, self.s.crawl_name, self.metrics.traffic)

    async def check_redis_identity(self) -> bool:
        """True (and the callback run) when Redis is not the server it was: a restart (from an AOF that may miss
        its last second) or a failover to a replica. Checked with every heartbeat, well inside a lease TTL."""
        with redis_errors("run_id check"):
            info = await self.frontier.redis.info("server")
        run_id = str(info.get("run_id", ""))
        replaced = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if replaced:
            self._say(
                "Redis was restarted or replaced (its run_id changed): forgetting the local seen-link cache", "warning"
            )
            self._on_redis_replaced()
        return replaced

    async def _heartbeat(self, snap: dict[str, Any] | None) -> None:
        if snap is None:
            snap = self.metrics.snapshot(self.proxies.success_rate(), reset=False)
        info = {
            "id": self.s.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": round(time.time() - (time.monotonic() - self.metrics.started), 1),
            "last_seen": round(time.time(), 1),
            "pages": self.metrics.pages,
            "pages_per_s": snap["pages_per_s"],
            "rss_mb": snap["rss_mb"],
            "proxy_success_rate": snap["proxy_success_rate"],
            "errors": dict(self.metrics.errors),
            "proxies": [
                {
                    "proxy": st.redacted,
                    "health": st.health,
                    "requests": st.requests,
                    "failures": st.failures,
                    "rotations": st.rotations,
                    "state": st.breaker.state,
                    "bytes": st.bytes,
                }
                for st in self.proxies.states
            ],
            **self._status(),
        }
        self.metrics.set_proxies(info["proxies"])
        await self.flush_traffic()
        with contextlib.suppress(RedisUnavailable):
            await self.check_redis_identity()
        with contextlib.suppress(RedisUnavailable):  # crawl-wide gauges for /metrics, refreshed with the beat
            if self.metrics.prom is not None:
                self.metrics.set_crawl_counters(await self.frontier.counters())
        with contextlib.suppress(RedisUnavailable):  # an outage: the next beat tries again
            await publish_heartbeat(self.frontier.redis, self.s.crawl_name, info, self.s.lifecycle.heartbeat_ttl_s)
