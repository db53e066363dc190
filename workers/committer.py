"""Stage 3, the committer: write and flush the records of finished leases, then settle them in one round trip.

Nothing is acked before its record is flushed. A commit has two phases with state between them: outcomes whose
records are written move to `written` until their settlement succeeds, so a retry after a Redis error (or the
final commit after a cancelled one) settles them without writing their records twice and without handing
their leases back. A commit starts as soon as the previous one ends: while one is in flight, the next batch
gathers by itself (group commit without a timer, so a lease holds its host slot no longer than it must).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from crawler.backoff import Backoff
from crawler.errors import RedisUnavailable
from crawler.frontier import Frontier, Lease, Settlement
from crawler.metrics import WorkerMetrics
from crawler.retry import Action
from crawler.sinks import JsonlSink
from workers.leaser import LeaseBook
from workers.outcomes import Outcome, settlement

COMMIT_MAX = 512  # outcomes per commit at most
BACKLOG_MAX = 4 * COMMIT_MAX  # finished outcomes waiting: past this, the leaser backs out


class Committer:
    """Owns the finished-but-unsettled outcomes; `run()` commits until `close()`, `final()` settles the rest."""

    def __init__(
        self,
        frontier: Frontier,
        sink: JsonlSink,
        book: LeaseBook,
        metrics: WorkerMetrics,
        on_settled: Callable[[], None],
        on_redis_error: Callable[[RedisUnavailable, float], None],
    ) -> None:
        self.frontier = frontier
        self.sink = sink
        self.book = book
        self.metrics = metrics
        self._on_settled = on_settled  # leases ended: the leaser may take more
        self._on_redis_error = on_redis_error  # (error, next wait): the engine logs and clears caches
        # finished outcomes whose records are not written yet
        self.pending: list[Outcome] = []
        # outcomes whose records are flushed and whose settlement has not succeeded yet (Redis away, or cancelled)
        self.written: list[Outcome] = []
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self.commits = 0

    def __repr__(self) -> str:
        return f"Committer(pending={len(self.pending)}, written={len(self.written)}, commits={self.commits})"

    def submit(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        self._wake.set()

    def backlogged(self) -> bool:
        return len(self.pending) > BACKLOG_MAX

    def unsettled(self) -> bool:
        return bool(self.pending or self.written)

    def finished_members(self) -> set[str]:
        return {o.lease.member for o in self.pending + self.written}

    def close(self) -> None:
        """The fetch tasks are gone: finish the commit in progress (never cut between write and ack), then leave."""
        self._closing.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._closing.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self.pending:
                await self.commit()

    async def commit(self, extra_release: list[Lease] | None = None, give_up_at: float | None = None) -> None:
        """Write and flush the pending records, then settle everything written (and hand back `extra_release`).

        Raises RedisUnavailable only when `give_up_at` (shutdown) passes with Redis still away.
        """
        batch, self.pending = self.pending[:COMMIT_MAX], self.pending[COMMIT_MAX:]
        if self.pending:
            self._wake.set()  # more than one commit's worth: go again right after this one
        records = [o.record for o in batch if o.record is not None and o.action is Action.DONE]
        if records:
            await asyncio.to_thread(self.sink.write, records)  # flushed before any ack below
        self.written += batch
        todo = list(self.written)
        s = settlement(todo, extra_release or [])
        if not s:
            return
        members = {ls.member for ls in s.leases}
        self.book.settling |= members
        try:
            await self._settle_until_done(s, give_up_at)
        finally:
            self.book.settling -= members
        settled = {id(o) for o in todo}
        self.written = [o for o in self.written if id(o) not in settled]
        self.metrics.released += len(s.released)
        for ls in s.leases:
            self.book.discard(ls)
        self.commits += 1
        self._on_settled()

    async def _settle_until_done(self, s: Settlement, give_up_at: float | None) -> None:
        backoff = Backoff()
        while True:
            try:
                await self.frontier.settle(s)
                return
            except RedisUnavailable as exc:
                # the records are written: keep trying (never write them twice, never drop them)
                wait = backoff.failed()
                if give_up_at is not None and time.monotonic() + wait > give_up_at:
                    raise
                self._on_redis_error(exc, wait)
                await backoff.wait()

    async def final(self, unfinished: list[Lease], give_up_at: float) -> bool:
        """Commit what finished and hand back `unfinished` without counting an attempt; True when settled."""
        try:
            await self.commit(unfinished, give_up_at)
            while self.pending:  # more than one commit's worth left at stop
                await self.commit(None, give_up_at)
            return True
        except RedisUnavailable:
            return False
        finally:
            await asyncio.to_thread(self.sink.close)
