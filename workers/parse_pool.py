"""The parse pool: a ProcessPoolExecutor with a backlog bounded in bytes.

`submit` waits while the bytes handed to the pool and not yet parsed exceed the budget, so a slow parser slows
the fetch tasks (and so leasing) instead of growing memory. A single body bigger than the budget is let through
when the pool is empty, so it cannot wait forever. A pool whose process died (BrokenProcessPool) is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from crawler.parse import ParsedPage, ParseTask, parse_pages


def _warm() -> int:
    return 0


def _watch_parent(parent_pid: int) -> None:
    """Pool initializer: exit when the worker process is gone (a SIGKILLed worker must not leave parsers behind;
    PR_SET_PDEATHSIG cannot help, as a pool process's parent is the forkserver, not the worker)."""
    import os
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class ByteBudget:
    """A semaphore counted in bytes, FIFO: waiters are woken in order while they fit (never all at once)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, n: int) -> None:
        if not self._waiters and (self.used == 0 or self.used + n <= self.limit):
            self.used += n
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as we were cancelled: give it back
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((n, fut))
            raise

    def release(self, n: int) -> None:
        self.used -= n
        while self._waiters:
            want, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used and self.used + want > self.limit:
                break
            self._waiters.popleft()
            self.used += want
            fut.set_result(None)


class ParsePool:
    """Pages go to the processes in batches: one pickled message per batch instead of one per page.

    While every process is busy, new pages gather in the next batch; as soon as a process is free the batch goes.
    An idle pool therefore adds no latency, and a busy one pays the IPC and thread hand-offs once per batch.
    """

    def __init__(self, workers: int, backlog_bytes: int, batch_max: int = 64) -> None:
        self.workers = workers
        self.backlog_limit = backlog_bytes
        self.batch_max = batch_max
        # bytes submitted and not yet parsed: the backpressure signal
        self._budget = ByteBudget(backlog_bytes)
        self._ctx = multiprocessing.get_context("forkserver")
        self._pool = self._new_pool()
        # pages waiting for the next batch, and how many batches the processes hold now
        self._batch: list[tuple[ParseTask, asyncio.Future[ParsedPage]]] = []
        self._inflight_batches = 0
        self.parsed = 0
        self.batches = 0
        self.restarts = 0

    def __repr__(self) -> str:
        return (
            f"ParsePool(workers={self.workers}, backlog={self.backlog}/{self.backlog_limit}, parsed={self.parsed}, "
            f"batches={self.batches})"
        )

    @property
    def backlog(self) -> int:
        return self._budget.used

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=self._ctx, initializer=_watch_parent, initargs=(os.getpid(),)
        )

    async def warm_up(self) -> None:
        """Start the processes before the first page, so start-up cost is not charged to a fetch."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, _warm) for _ in range(self.workers)))

    async def parse(self, task: ParseTask) -> ParsedPage:
        size = len(task.body)
        await self._budget.acquire(size)  # reserved here; released on any exit below
        try:
            fut: asyncio.Future[ParsedPage] = asyncio.get_running_loop().create_future()
            self._batch.append((task, fut))
            self._maybe_send()
            return await fut
        finally:
            self._budget.release(size)

    def _maybe_send(self) -> None:
        while self._batch and self._inflight_batches < self.workers:
            batch, self._batch = self._batch[: self.batch_max], self._batch[self.batch_max :]
            batch = [(t, f) for t, f in batch if not f.cancelled()]
            if not batch:
                continue
            self._inflight_batches += 1
            self.batches += 1
            try:
                cf = self._pool.submit(parse_pages, [t for t, _ in batch])
            except BrokenProcessPool:
                self._inflight_batches -= 1
                self._fail(batch)
                continue
            asyncio.wrap_future(cf).add_done_callback(functools.partial(self._done, batch))

    def _done(
        self, batch: list[tuple[ParseTask, asyncio.Future[ParsedPage]]], f: asyncio.Future[list[ParsedPage]]
    ) -> None:
        self._inflight_batches -= 1
        if f.cancelled():
            for _, fut in batch:
                fut.cancel()
        elif isinstance(f.exception(), BrokenProcessPool):
            self._fail(batch)
        elif f.exception() is not None:  # parse_pages never raises; a pickling error might
            for task, fut in batch:
                if not fut.done():
                    fut.set_result(ParsedPage(size=len(task.body), error="parse_error"))
        else:
            for (_, fut), page in zip(batch, f.result(), strict=True):
                if not fut.done():
                    fut.set_result(page)
            self.parsed += len(batch)
        self._maybe_send()

    def _fail(self, batch: list[tuple[ParseTask, asyncio.Future[ParsedPage]]]) -> None:
        """A parse process died (or the pool broke): those pages are recorded as such, the pool is replaced."""
        self._replace()
        for task, fut in batch:
            if not fut.done():
                fut.set_result(ParsedPage(size=len(task.body), error="parser_crashed"))

    def _replace(self) -> None:
        old = self._pool
        self._pool = self._new_pool()
        self.restarts += 1
        old.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
