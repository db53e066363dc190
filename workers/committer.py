"""Stage 3, the committer: write and flush the records of finished leases, then settle them in one round trip.

Nothing is acked before its record is flushed. A commit has two phases with state between them: outcomes whose
records are written move to `written` until their settlement succeeds, so a retry after a Redis error (or the
final commit after a cancelled one) settles them without writing their records twice and without handing
their leases back. A commit starts as soon as the previous one ends: while one is in flight, the next batch
gathers by itself (group commit without a timer, so a lease holds its host slot no longer than it must).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Callable

from crawler.backoff import Backoff
from crawler.errors import RedisUnavailable
from crawler.frontier import Frontier, Lease, Settlement
from crawler.metrics import WorkerMetrics
from crawler.retry import Action
from crawler.sinks import Outputs
from workers.leaser import LeaseBook
from workers.outcomes import Outcome, settlement

COMMIT_MAX = 512  # outcomes per commit at most
OUTPUT_PROBE_S = 1.0  # while the output cannot be written, how often to try again
BACKLOG_MAX = 4 * COMMIT_MAX  # finished outcomes waiting: past this, the leaser backs out


class Committer:
    """Owns the finished-but-unsettled outcomes; `run()` commits until `close()`, `final()` settles the rest."""

    def __init__(
        self,
        frontier: Frontier,
        outputs: Outputs,
        book: LeaseBook,
        metrics: WorkerMetrics,
        on_settled: Callable[[], None],
        on_redis_error: Callable[[RedisUnavailable, float], None],
        say: Callable[[str, str], None] = lambda _m, _l: None,
    ) -> None:
        self.frontier = frontier
        self.outputs = outputs
        self.book = book
        self.metrics = metrics
        self._on_settled = on_settled  # leases ended: the leaser may take more
        self._on_redis_error = on_redis_error  # (error, next wait): the engine logs and clears caches
        # finished outcomes whose records are not written yet
        self.pending: list[Outcome] = []
        # outcomes whose records are flushed and whose settlement has not succeeded yet (Redis away, or cancelled)
        self.written: list[Outcome] = []
        self._say = say
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self.commits = 0
        # the output cannot be written (disk full, EIO, directory gone): nothing is written or leased until a
        # probe succeeds; the batch that failed was handed back
        self.output_error: OSError | None = None

    def __repr__(self) -> str:
        return f"Committer(pending={len(self.pending)}, written={len(self.written)}, commits={self.commits})"

    def submit(self, outcome: Outcome) -> None:
        self.pending.append(outcome)
        self._wake.set()

    def backlogged(self) -> bool:
        return len(self.pending) > BACKLOG_MAX or self.output_error is not None

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
            if self.output_error is not None:
                await self._probe_output()
                continue
            await self._wake.wait()
            self._wake.clear()
            if self.pending:
                await self.commit()

    async def _probe_output(self) -> None:
        """Wait for the output to be writable again (a probe each OUTPUT_PROBE_S), then resume."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), OUTPUT_PROBE_S)
        if self._closing.is_set():
            return
        try:
            await asyncio.to_thread(self.outputs.probe)
        except OSError:
            return
        self.output_error = None
        self._say(f"output writable again ({self._where()}): resuming", "warning")
        self._wake.set()
        self._on_settled()

    def _where(self) -> str:
        return ", ".join(str(d) for d in self.outputs.directories)

    def _output_failed(self, batch: list[Outcome], exc: OSError) -> list[Outcome]:
        """The batch could not be written: its leases go back without an attempt (written lines of it become
        duplicates later, never losses). Said once per outage."""
        if self.output_error is None:
            what = "output disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "output error"
            self._say(
                f"{what}: {self._where()} ({exc.strerror or exc}); handing back {len(batch)} leases and pausing "
                f"until it can be written again",
                "error",
            )
        self.output_error = exc
        return [Outcome(o.lease, Action.RELEASE, o.lease.attempts) for o in batch]

    async def commit(self, extra_release: list[Lease] | None = None, give_up_at: float | None = None) -> None:
        """Write and flush the pending records, then settle everything written (and hand back `extra_release`).

        Raises RedisUnavailable only when `give_up_at` (shutdown) passes with Redis still away.
        """
        batch, self.pending = self.pending[:COMMIT_MAX], self.pending[COMMIT_MAX:]
        if self.pending:
            self._wake.set()  # more than one commit's worth: go again right after this one
        done = [o for o in batch if o.action is Action.DONE]
        records = [o.record for o in done if o.record is not None]
        items = [o.items for o in done if o.items]
        warc = [x for o in batch if o.action is not Action.RELEASE for x in o.warc]  # every attempt, retried too
        if records or items or warc:
            try:
                await asyncio.to_thread(self.outputs.write, records, items, warc)  # flushed before any ack below
            except OSError as exc:
                batch = self._output_failed(batch, exc)
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
            await asyncio.to_thread(self.outputs.close)
