"""The worker's stages, in process, against the real test Redis (no worker subprocess).

- the leaser: the lease plan (pure), --max-pages at the default concurrency (the hang of issue 12), and the one
  backpressure predicate holding leasing back;
- the committer: records written but not settled while Redis is away are settled later, never written twice;
- the parse pool's byte budget: a grant that lands just as its waiter is cancelled is given back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from crawler.errors import RedisUnavailable
from crawler.frontier import Frontier, Lease
from crawler.metrics import WorkerMetrics
from crawler.records import Record
from crawler.retry import Action
from crawler.sinks import JsonlSink, Outputs
from crawler.testing.services import free_port
from crawler.urls import normalize
from workers.committer import Committer
from workers.leaser import LeaseBook, Leaser, plan_lease
from workers.outcomes import Outcome
from workers.parse_pool import ByteBudget


@asynccontextmanager
async def frontier_at(url: str, crawl_name: str) -> AsyncIterator[Frontier]:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        yield Frontier(client, crawl_name)
    finally:
        await client.aclose()


async def seed(f: Frontier, n: int) -> None:
    await f.add([normalize(f"http://h{i % 7}.example/p{i}") for i in range(n)])


async def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def make_leaser(f: Frontier, **kw: Any) -> Leaser:
    args: dict[str, Any] = {
        "concurrency": 64,
        "batch": 64,
        "ttl_s": 30.0,
        "max_pages": None,
        "until_idle": False,
        "needs_backout": lambda: False,
        "has_unsettled": lambda: False,
        "busy": lambda: 0,
        "warn": lambda _m: None,
    }
    args.update(kw)
    return Leaser(f, "t.1", **args)


# -- the lease plan -----------------------------------------------------------------------------------------
def test_plan_leases_what_is_left_of_max_pages_even_below_the_low_water_mark() -> None:
    plan = plan_lease(held=0, busy=0, queued=0, limit=128, batch=64, leased_total=0, max_pages=10)
    assert (plan.take, plan.budget_spent) == (10, False)
    assert plan_lease(held=0, busy=0, queued=0, limit=128, batch=64, leased_total=10, max_pages=10).budget_spent


def test_plan_waits_for_a_worthwhile_batch_unless_fetch_tasks_starve() -> None:
    # 124 held, 4 free: below a quarter batch, and 34 held leases are finished, waiting for their commit -> wait
    assert plan_lease(held=124, busy=50, queued=40, limit=128, batch=64, leased_total=0, max_pages=None).take == 0
    # the same 4 free slots while every held lease is in a fetch task or queued -> take them
    assert plan_lease(held=124, busy=64, queued=60, limit=128, batch=64, leased_total=0, max_pages=None).take == 4
    assert plan_lease(held=128, busy=64, queued=64, limit=128, batch=64, leased_total=0, max_pages=None).take == 0


# -- the leaser against Redis -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_max_pages_at_the_default_concurrency_leases_exactly_n_and_stops(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with frontier_at(redis_server.url, crawl_name) as f:
            await seed(f, 200)
            leaser = make_leaser(f, max_pages=10)
            task = asyncio.create_task(leaser.run())
            done = 0
            while not task.done():
                getter = asyncio.ensure_future(leaser.queue.get())
                await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                ls = getter.result()
                await f.ack([ls])
                leaser.book.discard(ls)
                done += 1
                leaser.capacity.set()
            await task
            assert leaser.stop_reason == "--max-pages 10 reached"
            assert done == leaser.leased_total == 10
            c = await f.counters()
            assert (c.done, c.inflight, c.queued) == (10, 0, 190)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_backpressure_predicate_holds_leasing_until_it_clears(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with frontier_at(redis_server.url, crawl_name) as f:
            await seed(f, 50)
            backout = True
            asked = asyncio.Event()

            def needs_backout() -> bool:
                asked.set()
                return backout

            leaser = make_leaser(f, needs_backout=needs_backout)
            task = asyncio.create_task(leaser.run())
            await asyncio.wait_for(asked.wait(), 10)
            assert leaser.queue.qsize() == 0 and (await f.counters()).inflight == 0
            backout = False
            leaser.capacity.set()
            await wait_until(lambda: leaser.queue.qsize() == 50)
            assert (await f.counters()).inflight == 50
            leaser.stop()
            await asyncio.wait_for(task, 10)
            await f.release(leaser.book.leases())
            assert (await f.counters()).queued == 50

    asyncio.run(main())


# -- the committer ------------------------------------------------------------------------------------------
def record_of(ls: Lease) -> Record:
    return Record(ls.url, ls.url, 200, ls.depth, time.time(), 1, 10, "text/html", "t", [], None, 1, None)


@pytest.mark.timeout(60)
def test_written_but_unsettled_results_are_settled_later_and_never_written_twice(
    redis_server: Any, crawl_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        async with (
            frontier_at(redis_server.url, crawl_name) as good,
            frontier_at(f"redis://127.0.0.1:{free_port()}/0", crawl_name) as away,
        ):
            await seed(good, 3)
            leases, _ = await good.lease(3, "t.1", 30)
            book = LeaseBook()
            for ls in leases:
                book.add(ls)
            sink = JsonlSink(tmp_path, "w1", 1 << 30)
            errors: list[str] = []
            settled = asyncio.Event()
            committer = Committer(
                away, Outputs(sink), book, WorkerMetrics("w1"), settled.set, lambda e, _w: errors.append(str(e))
            )
            for ls in leases:
                committer.submit(Outcome(ls, Action.DONE, 1, record=record_of(ls)))
            with pytest.raises(RedisUnavailable):
                await committer.commit(give_up_at=time.monotonic() + 0.5)
            out = tmp_path / "w1.jsonl"
            assert [json.loads(x)["url"] for x in out.read_text().splitlines()] == [ls.url for ls in leases]
            assert len(committer.written) == 3 and len(book) == 3 and not settled.is_set()
            assert errors and "Redis unavailable" in errors[0]

            committer.frontier = good  # Redis is back
            await committer.commit()
            assert settled.is_set() and not committer.written and len(book) == 0
            assert len(out.read_text().splitlines()) == 3  # not written again
            c = await good.counters()
            assert (c.done, c.inflight) == (3, 0)
            sink.close()

    asyncio.run(main())


# -- the parse pool's byte budget ---------------------------------------------------------------------------
def test_a_grant_that_lands_as_its_waiter_is_cancelled_is_given_back() -> None:
    async def main() -> None:
        budget = ByteBudget(10)
        await budget.acquire(10)
        waiter = asyncio.create_task(budget.acquire(5))
        await wait_until(lambda: bool(budget._waiters))
        budget.release(10)  # grants the waiter (its future is resolved) ...
        waiter.cancel()  # ... and it is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.used == 0
        await asyncio.wait_for(budget.acquire(10), 1)  # nothing leaked: the whole budget is free again

    asyncio.run(main())
