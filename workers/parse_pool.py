"""The parse pool: a ProcessPoolExecutor with a backlog bounded in bytes.

`submit` waits while the bytes handed to the pool and not yet parsed exceed the budget, so a slow parser slows
the fetch tasks (and so leasing) instead of growing memory. A single body bigger than the budget is let through
when the pool is empty, so it cannot wait forever. A pool whose process died (BrokenProcessPool) is replaced.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from crawler.parse import ParsedPage, ParseTask, parse_page


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


class ParsePool:
    def __init__(self, workers: int, backlog_bytes: int) -> None:
        self.workers = workers
        self.backlog_limit = backlog_bytes
        # bytes submitted and not yet parsed: the backpressure signal
        self.backlog = 0
        self._cond = asyncio.Condition()
        self._ctx = multiprocessing.get_context("forkserver")
        self._pool = self._new_pool()
        self.parsed = 0
        self.restarts = 0

    def __repr__(self) -> str:
        return f"ParsePool(workers={self.workers}, backlog={self.backlog}/{self.backlog_limit}, parsed={self.parsed})"

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
        async with self._cond:
            await self._cond.wait_for(lambda: self.backlog == 0 or self.backlog + size <= self.backlog_limit)
            self.backlog += size  # reserved before the first await below; released on any exit
        try:
            loop = asyncio.get_running_loop()
            try:
                result = await loop.run_in_executor(self._pool, parse_page, task)
            except BrokenProcessPool:
                self._replace()
                return ParsedPage(size=size, error="parser_crashed")
            self.parsed += 1
            return result
        finally:
            async with self._cond:
                self.backlog -= size
                self._cond.notify_all()

    def _replace(self) -> None:
        old = self._pool
        self._pool = self._new_pool()
        self.restarts += 1
        old.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
