"""The parse pool: our own parse processes, a backlog bounded in bytes, and a wall around user code.

`parse` waits while the bytes handed to the pool and not yet parsed exceed the budget, so a slow parser slows
the fetch tasks (and so leasing) instead of growing memory. A single body bigger than the budget is let through
when the pool is empty, so it cannot wait forever.

Why not a ProcessPoolExecutor: it cannot stop a running task, and one dead process breaks every batch of the
pool. Here each process has a slot: a thread that owns it, sends it one batch at a time over a pipe (one pickled
message per batch, as before) and watches a shared `progress` pair (index of the page being parsed, its start).
A page past `timeout_s` gets its process SIGKILLed by PID (Celery's hard time limit); that page is recorded as
`parse_timeout`, the rest of its batch goes back to the front of the queue, and the slot starts a new process.
A process that dies by itself costs the page it was on `parser_crashed` the same way; other slots never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from crawler.errors import ConfigError
from crawler.parse import ParsedPage, ParseTask, parse_pages
from crawler.scrape import get_parser

START_TIMEOUT_S = 60.0  # a parse process must be ready (its parser imported) within this
MAX_TRIES = 3  # batches a page may be in when their process died before the page is given up as parser_crashed
# Parse processes run this much nicer than the worker: when the cores are contended, the event loop (the one serial
# stage: every fetch, every hand-off) runs first, and parsing, which has a bounded backlog to absorb the wait,
# takes what is left. Measured (scripts/bench.py, crawl-worker vs crawl-worker-warc, interleaved pairs on the 2-core
# machine): --warc at 0.83x the plain run's pages/s (mean of 8 pairs) with 0, 0.85x (mean and median of 20 pairs)
# with 5; the plain run unchanged. Within the noise of single pairs (0.73-1.00): kept because the policy is right
# where cores are contended and costs nothing where they are not, not because the benchmark proved a gain.
PARSE_NICE = 5


def _watch_parent(parent_pid: int) -> None:
    """Exit when the worker process is gone (a SIGKILLed worker must not leave parsers behind; PR_SET_PDEATHSIG
    cannot help, as a parse process's parent is the forkserver, not the worker)."""

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


def tune_gc() -> None:
    """Fewer, cheaper cyclic collections: freeze what start-up allocated (modules, settings, session, parser), so
    collections never scan it again, and collect the young generation every 50,000 allocations rather than 700.
    Measured in docs/benchmarks.md: at 256 fetches in flight the default collector took 13% of the CPU."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # used by the worker process and by every parse process (whose caches of links and pages churn the young
    # generation just as much)


def serve(conn: Connection, progress: Any, parent_pid: int, parser_spec: str | None) -> None:
    """A parse process: load the parser, say ready, then parse batch after batch until told to stop (None)."""
    _watch_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle; it stops us
    if parser_spec is not None:
        try:
            get_parser(parser_spec)
        except ConfigError as exc:
            conn.send(("error", str(exc)))
            return
    tune_gc()
    os.nice(PARSE_NICE)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            tasks = conn.recv()
        except (EOFError, OSError):
            return
        if tasks is None:
            return
        conn.send(parse_pages(tasks, progress))


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


@dataclass(slots=True)
class _Job:
    task: ParseTask
    fut: asyncio.Future[ParsedPage]
    tries: int = 0  # batches it was in whose process died before finishing it


class _Slot:
    """One parse process and the thread that owns it (sends, receives, watches the clock, restarts).

    The thread blocks on the pipe, never the event loop; results go back with `call_soon_threadsafe`."""

    def __init__(self, pool: ParsePool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.inbox: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        # [page index, start on the monotonic clock], written by the process, read by the watchdog
        self.progress: Any = pool.ctx.RawArray("d", 2)
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None
        self.init_error: str | None = None  # the parser cannot be loaded in a (re)started process
        self.thread = threading.Thread(target=self._run, name=f"parse-slot-{index}", daemon=True)

    def __repr__(self) -> str:
        return f"_Slot({self.index}, pid={self.proc.pid if self.proc else None})"

    def _start(self) -> None:
        """Start a process and wait for it to say ready (or why not). Blocking: runs in the slot's thread."""
        parent, child = self.pool.ctx.Pipe()
        self.progress[0] = -1
        proc = self.pool.ctx.Process(
            target=serve,
            args=(child, self.progress, os.getpid(), self.pool.parser_spec),
            name=f"crawl-parse-{self.index}",
            daemon=True,
        )
        try:
            proc.start()
        except Exception as exc:  # no process at all (fork refused, ...): the slot answers with this error
            parent.close()
            child.close()
            self.init_error = f"cannot start a parse process: {exc.__class__.__name__}: {str(exc).strip()[:200]}"
            return
        child.close()  # ours closed: a dead process reads as EOF on `parent`
        self.proc, self.conn = proc, parent
        try:
            if not parent.poll(START_TIMEOUT_S):
                raise EOFError("not ready in time")
            kind, value = parent.recv()
        except (EOFError, OSError) as exc:
            kind, value = "error", f"the parse process did not start ({exc.__class__.__name__})"
        self.init_error = None if kind == "ready" else str(value)
        if self.init_error is not None:
            self._reap()

    def _reap(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                if self.proc.pid is not None and self.proc.is_alive():
                    os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.join(5.0)
        self.proc = self.conn = None

    def _run(self) -> None:
        self._start()
        self.pool.post(self.pool.slot_ready, self, self.init_error)
        while True:
            jobs = self.inbox.get()
            if jobs is None:
                break
            if self.proc is None:
                self._start()
            if self.init_error is not None:
                self.pool.post(self.pool.batch_failed, self, jobs, self.init_error)
                continue
            outcome = self._parse(jobs)
            if isinstance(outcome, list):
                self.pool.post(self.pool.batch_done, self, jobs, outcome)
                continue
            culprit, reason = outcome
            self._reap()
            self.pool.post(self.pool.batch_lost, self, jobs, culprit, reason)
            if self.pool.closing:
                return
            self._start()  # off the event loop: the fork and the parser's import happen here
            self.pool.post(self.pool.slot_ready, self, self.init_error)
        self._stop_process()

    def _parse(self, jobs: list[_Job]) -> list[ParsedPage] | tuple[int, str]:
        """The batch's results, or (index of the page that hung or crashed, -1 if none, the reason)."""
        assert self.conn is not None and self.proc is not None
        timeout = self.pool.timeout_s
        tick = min(0.25, timeout / 4)
        try:
            self.conn.send([j.task for j in jobs])
            while not self.conn.poll(tick):
                index, started = int(self.progress[0]), self.progress[1]
                if index >= 0 and time.monotonic() - started > timeout and int(self.progress[0]) == index:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.proc.pid or 0, signal.SIGKILL)
                    return index, "parse_timeout"
            results: list[ParsedPage] = self.conn.recv()
            return results
        except (EOFError, OSError):
            return int(self.progress[0]), "parser_crashed"
        except Exception as exc:  # a task or result that cannot be pickled: the process is fine, the batch is not
            detail = f"cannot pass the page to or from the parse process: {type(exc).__name__}"
            return [ParsedPage(size=len(j.task.body), error="parse_error", parser_error_detail=detail) for j in jobs]

    def _stop_process(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        if self.proc is not None:
            self.proc.join(2.0)
        self._reap()

    def kill(self) -> None:
        """At close: a process still busy (a hung parser) is killed so the thread can leave."""
        proc = self.proc
        if proc is not None and proc.pid is not None and proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


class ParsePool:
    """Pages go to the processes in batches: one pickled message per batch instead of one per page.

    While every process is busy, new pages gather in the next batch; as soon as a process is free the batch goes.
    An idle pool therefore adds no latency, and a busy one pays the IPC and thread hand-offs once per batch.
    `parser_spec` is loaded in every process at start; `timeout_s` is the per-page limit (`--parse-timeout`).
    """

    def __init__(
        self,
        workers: int,
        backlog_bytes: int,
        batch_max: int = 64,
        parser_spec: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"--parse-timeout must be > 0, got {timeout_s}")
        self.workers = workers
        self.backlog_limit = backlog_bytes
        self.batch_max = batch_max
        self.parser_spec = parser_spec
        self.timeout_s = timeout_s
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["crawler.parse", "workers.parse_pool"])  # fast restarts
        # bytes submitted and not yet parsed: the backpressure signal
        self._budget = ByteBudget(backlog_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: list[_Slot] = []
        # pages waiting for a batch (a lost batch's pages go back to the front), and the slots free to take one
        self._pending: deque[_Job] = deque()
        self._idle: deque[_Slot] = deque()
        self._starting: dict[int, asyncio.Future[None]] = {}  # slot index -> ready, until the first start
        self.closing = False  # read by the slots' threads: no restart once closing
        self.parsed = 0
        self.batches = 0
        self.restarts = 0
        self.timeouts = 0
        self.crashes = 0

    def __repr__(self) -> str:
        return (
            f"ParsePool(workers={self.workers}, backlog={self.backlog}/{self.backlog_limit}, parsed={self.parsed}, "
            f"batches={self.batches}, timeouts={self.timeouts}, crashes={self.crashes}, restarts={self.restarts})"
        )

    @property
    def backlog(self) -> int:
        return self._budget.used

    def _ensure_started(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        for i in range(self.workers):
            slot = _Slot(self, i)
            self._slots.append(slot)
            self._starting[i] = self._loop.create_future()
            slot.thread.start()

    def post(self, fn: Any, *args: Any) -> None:
        """From a slot's thread: run `fn(*args)` on the event loop (ignored once the loop is gone)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    async def warm_up(self) -> None:
        """Start the processes (and import the parser in each) before the first page, so start-up cost is not
        charged to a fetch; ConfigError when the parser cannot be loaded there."""
        self._ensure_started()
        await asyncio.gather(*self._starting.values())

    async def parse(self, task: ParseTask) -> ParsedPage:
        self._ensure_started()
        size = len(task.body)
        await self._budget.acquire(size)  # reserved here; released on any exit below
        try:
            assert self._loop is not None
            job = _Job(task, self._loop.create_future())
            self._pending.append(job)
            self._dispatch()
            return await job.fut
        finally:
            self._budget.release(size)

    def _dispatch(self) -> None:
        while self._pending and self._idle:
            jobs: list[_Job] = []
            while self._pending and len(jobs) < self.batch_max:
                job = self._pending.popleft()
                if not job.fut.done():
                    jobs.append(job)
            if jobs:
                self.batches += 1
                self._idle.popleft().inbox.put(jobs)

    # -- callbacks from the slots' threads, run on the event loop ------------------------------------------------
    def slot_ready(self, slot: _Slot, init_error: str | None) -> None:
        starting = self._starting.pop(slot.index, None)
        if starting is not None and not starting.done():
            if init_error is not None:
                starting.set_exception(ConfigError(init_error))
                starting.add_done_callback(lambda f: f.exception())  # retrieved even when nobody warmed up
            else:
                starting.set_result(None)
        self._idle.append(slot)
        self._dispatch()

    def batch_done(self, slot: _Slot, jobs: list[_Job], results: list[ParsedPage]) -> None:
        for job, page in zip(jobs, results, strict=True):
            if not job.fut.done():
                job.fut.set_result(page)
        self.parsed += len(jobs)
        self._idle.append(slot)
        self._dispatch()

    def batch_failed(self, slot: _Slot, jobs: list[_Job], detail: str) -> None:
        """No process could be started for this slot (the parser no longer loads): the pages record why."""
        for job in jobs:
            if not job.fut.done():
                job.fut.set_result(
                    ParsedPage(size=len(job.task.body), error="parser_error", parser_error_detail=detail[:300])
                )
        self._idle.append(slot)
        self._dispatch()

    def batch_lost(self, slot: _Slot, jobs: list[_Job], culprit: int, reason: str) -> None:
        """The slot's process was killed (a page past the time limit) or died: the page it was on gets `reason`,
        the others go back to the front of the queue, to be parsed again by any slot."""
        self.restarts += 1
        if reason == "parse_timeout":
            self.timeouts += 1
        else:
            self.crashes += 1
        again: list[_Job] = []
        for i, job in enumerate(jobs):
            if job.fut.done():
                continue
            job.tries += 1
            if i == culprit or job.tries >= MAX_TRIES:
                job.fut.set_result(self._lost_page(job, reason if i == culprit else "parser_crashed"))
            else:
                again.append(job)
        self._pending.extendleft(reversed(again))
        self._dispatch()

    def _lost_page(self, job: _Job, reason: str) -> ParsedPage:
        detail = (
            f"parsing took over {self.timeout_s:g} s (--parse-timeout): the parse process was replaced"
            if reason == "parse_timeout"
            else "the parse process died on this page and was replaced"
        )
        return ParsedPage(size=len(job.task.body), error=reason, parser_error_detail=detail)

    def close(self) -> None:
        """Stop every process (a busy one is killed after a short wait); never blocks for long."""
        self.closing = True
        for slot in self._slots:
            slot.inbox.put(None)
        deadline = time.monotonic() + 1.0
        for slot in self._slots:
            slot.thread.join(max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            if slot.thread.is_alive():
                slot.kill()
                slot.thread.join(5.0)
        for job in self._pending:
            if not job.fut.done():
                job.fut.cancel()
        self._pending.clear()
