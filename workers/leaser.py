"""Stage 1, the leaser: takes batches of URLs from the frontier while the one backpressure predicate allows.

It owns the leases this process holds (`LeaseBook`) and the local queue the fetch tasks take from. Leasing is
bounded by leases held (concurrency plus one batch), so the local queue never grows past that, whatever the
size of the crawl. It stops by itself (stop() wakes it), never by cancellation mid-call: a cancelled lease call
could orphan a leased batch until its TTL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from crawler.backoff import Backoff, pause
from crawler.errors import RedisUnavailable
from crawler.frontier import Frontier, Lease

IDLE_POLL_S = 0.2  # nothing queued or deferred anywhere: how often to look again
MAX_POLL_S = 0.5


class LeaseBook:
    """Every lease this process owns (member -> lease): renewed while held, handed back at stop.

    Removal is by identity: the same member may have been leased again (after expiring) since. `settling` holds the
    members whose settlement is on its way to Redis: the renew loop, on its own connection, may see them gone
    before the committer hears back, and must not call that a loss.
    """

    __slots__ = ("_held", "settling")

    def __init__(self) -> None:
        self._held: dict[str, Lease] = {}
        self.settling: set[str] = set()

    def __len__(self) -> int:
        return len(self._held)

    def __repr__(self) -> str:
        return f"LeaseBook(held={len(self._held)})"

    def add(self, lease: Lease) -> None:
        self._held[lease.member] = lease

    def discard(self, lease: Lease) -> None:
        if self._held.get(lease.member) is lease:
            del self._held[lease.member]

    def owns(self, member: str) -> bool:
        return member in self._held

    def really_lost(self, lost: list[Lease]) -> list[Lease]:
        """Of the leases a renew found gone, those that were neither settled nor being settled meanwhile."""
        return [ls for ls in lost if ls.member in self._held and ls.member not in self.settling]

    def leases(self) -> list[Lease]:
        return list(self._held.values())


@dataclass(frozen=True, slots=True)
class LeasePlan:
    """How many URLs to lease now; a pure decision (STYLE 7), tested without Redis."""

    take: int  # 0: wait for capacity
    budget_spent: bool  # --max-pages reached: lease nothing more, ever


def plan_lease(
    held: int, busy: int, queued: int, limit: int, batch: int, leased_total: int, max_pages: int | None
) -> LeasePlan:
    """Lease when a worthwhile batch fits: at least a quarter batch, or all that is left of --max-pages, or
    anything at all when every held lease is already being worked on (never let fetch tasks starve)."""
    free = limit - held
    remaining = None if max_pages is None else max_pages - leased_total
    if remaining is not None:
        if remaining <= 0:
            return LeasePlan(0, True)
        free = min(free, remaining)
    want = min(free, batch)
    if want <= 0:
        return LeasePlan(0, False)
    low_water = max(1, batch // 4)
    if remaining is not None:
        low_water = min(low_water, remaining)
    starving = held <= busy + queued and held < limit  # every lease is in a fetch task or the queue
    if want >= low_water or starving:
        return LeasePlan(want, False)
    return LeasePlan(0, False)


class Leaser:
    """Leases into `queue` while `needs_backout()` is false; says when the crawl is idle (--until-idle)."""

    def __init__(
        self,
        frontier: Frontier,
        token: str,
        *,
        concurrency: int,
        batch: int,
        ttl_s: float,
        max_pages: int | None,
        until_idle: bool,
        needs_backout: Callable[[], bool],
        has_unsettled: Callable[[], bool],
        busy: Callable[[], int],
        warn: Callable[[str], None],
        idle_horizon_s: float = 0.0,
    ) -> None:
        self.frontier = frontier
        self.token = token
        self.book = LeaseBook()
        # leases waiting for a fetch task; at most concurrency + one batch, because leasing is bounded by the book
        self.queue: asyncio.Queue[Lease] = asyncio.Queue()
        self.capacity = asyncio.Event()  # set when leases end or the worker stops: look again
        self.stopping = asyncio.Event()
        self.leased_total = 0
        self.stop_reason: str | None = None  # set when the leaser itself decides the worker is done
        self._limit = concurrency + batch
        self._batch = batch
        self._ttl_s = ttl_s
        self._max_pages = max_pages
        self._until_idle = until_idle
        self._needs_backout = needs_backout
        self._has_unsettled = has_unsettled
        self._busy = busy
        self._warn = warn
        self._backoff = Backoff()
        self._idle_horizon_s = idle_horizon_s  # --until-idle: a recurring pass due within this keeps it running

    def __repr__(self) -> str:
        return f"Leaser(leased={self.leased_total}, book={self.book!r}, queue={self.queue.qsize()})"

    def budget_spent(self) -> bool:
        return self._max_pages is not None and self.leased_total >= self._max_pages

    def stop(self) -> None:
        self.stopping.set()
        self.capacity.set()

    def drop_unstarted(self) -> None:
        """Empty the local queue at stop: those leases are still in the book and are handed back from there."""
        while not self.queue.empty():
            self.queue.get_nowait()

    async def run(self) -> None:
        while not self.stopping.is_set():
            plan = plan_lease(
                len(self.book),
                self._busy(),
                self.queue.qsize(),
                self._limit,
                self._batch,
                self.leased_total,
                self._max_pages,
            )
            if plan.budget_spent:
                if not len(self.book):
                    self.stop_reason = f"--max-pages {self._max_pages} reached"
                    return
                await self._wait(MAX_POLL_S)
                continue
            if plan.take == 0 or self._needs_backout():
                await self._wait(MAX_POLL_S)
                continue
            try:
                leases, next_due = await self.frontier.lease(plan.take, self.token, self._ttl_s)
            except RedisUnavailable as exc:
                wait = self._backoff.failed()
                self._warn(f"Redis unavailable while leasing ({exc.cause_name}); retrying in {wait:.1f}s")
                await self._backoff.wait(self.capacity)
                continue
            self._backoff.reset()
            if leases:
                self.leased_total += len(leases)
                for ls in leases:
                    self.book.add(ls)
                    self.queue.put_nowait(ls)
                continue
            if await self._idle():
                return
            wait = IDLE_POLL_S if next_due < 0 else min(MAX_POLL_S, max(0.005, next_due / 1000 - time.time()))
            await self._wait(wait)

    async def _idle(self) -> bool:
        """--until-idle: True when nothing is queued, deferred or in flight anywhere in the crawl."""
        if not self._until_idle or len(self.book) or self._has_unsettled():
            return False
        try:
            counters = await self.frontier.counters()
        except RedisUnavailable:
            return False
        if counters.idle_within(self._idle_horizon_s):
            self.stop_reason = "frontier idle (--until-idle)"
            return True
        return False

    async def _wait(self, seconds: float) -> None:
        self.capacity.clear()
        await pause(seconds, self.capacity)
