"""The frontier's operations against a real Redis: add, lease, ack, release, defer, dead, reclaim, renew.

Every test checks the crawl-wide counter invariant `enqueued == done + dead + queued + deferred + inflight` after
each step. Time-dependent behaviour is tested with due times in the past or the future, and lease expiry by
polling the clock until a (tiny) lease deadline has passed, never by sleeping a guessed amount.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

import crawler.frontier as frontier_mod
from crawler.frontier import (
    Counters,
    DeadLetter,
    Deferral,
    Frontier,
    Lease,
    NewLink,
    Politeness,
    Settlement,
    now_ms,
)
from crawler.urls import NormalizedURL, normalize

pytestmark = pytest.mark.timeout(60)

LONG_TTL_S = 60.0


def urls(host: str, n: int, start: int = 0) -> list[NormalizedURL]:
    return [normalize(f"http://{host}/p{i}") for i in range(start, start + n)]


@contextlib.asynccontextmanager
async def open_frontier(redis_url: str, crawl: str, politeness: Politeness | None = None) -> AsyncIterator[Frontier]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield Frontier(client, crawl, politeness)
    finally:
        try:
            await Frontier(client, crawl).purge()
        finally:
            await client.aclose()


async def check(f: Frontier, **expected: int) -> Counters:
    """The invariant always holds (recurring URLs between passes are `scheduled`); `expected` pins counters."""
    c = await f.counters()
    assert c.consistent, c
    assert c.enqueued == c.done + c.dead + c.queued + c.deferred + c.inflight + c.scheduled, c
    for name, value in expected.items():
        assert getattr(c, name) == value, (name, c)
    # the stored `queued` counter matches the per-host lists
    queued = 0
    async for key in f.redis.scan_iter(match=f.keys.prefix + "q:*", count=1000):
        queued += int(await f.redis.llen(key))
    assert queued == c.queued, (queued, c)
    return c


async def deadline_of(f: Frontier, lease: Lease) -> int | None:
    score = await f.redis.zscore(f.keys.leases, lease.member)
    return None if score is None else int(score)


async def wait_expired(f: Frontier, leases: list[Lease], timeout_s: float = 5.0) -> None:
    """Poll the clock until every lease's deadline is in the past (reclaim takes deadline <= now)."""
    deadlines = [await deadline_of(f, ls) for ls in leases]
    assert all(d is not None for d in deadlines)
    last = max(d for d in deadlines if d is not None)
    give_up = time.monotonic() + timeout_s
    while now_ms() <= last:
        assert time.monotonic() < give_up, "lease deadline never passed"
        await asyncio.sleep(0.001)


def test_add_dedups(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await check(f, enqueued=0, queued=0)
            first = urls("a.example", 10)
            assert await f.add(first) == 10
            await check(f, enqueued=10, queued=10)
            assert await f.add(first) == 0  # second add of the same URLs
            await check(f, enqueued=10, queued=10)
            # overlapping batch: only the 5 new ones count
            assert await f.add(urls("a.example", 10, start=5)) == 5
            # other spellings of an already seen URL are duplicates too
            spellings = ["HTTP://A.EXAMPLE:80/p3#frag", "http://a.example/p3?utm_source=x"]
            assert await f.add([normalize(u) for u in spellings]) == 0
            # duplicates inside one batch count once
            assert await f.add([normalize("http://b.example/x")] * 3) == 1
            await check(f, enqueued=16, queued=16, done=0, inflight=0)
            assert await f.redis.scard(f.keys.seen) == 16
            assert await f.add([]) == 0

    asyncio.run(main())


def test_lease_ack_with_new_links(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            assert await f.lease(10, "c1", LONG_TTL_S) == ([], -1)  # empty frontier
            seeds = urls("a.example", 5)
            await f.add(seeds, depth=2)
            leases, _ = await f.lease(3, "c1", LONG_TTL_S)
            assert len(leases) == 3
            assert [ls.url for ls in leases] == [n.url for n in seeds[:3]]  # FIFO per host
            assert all(ls.depth == 2 and ls.attempts == 0 for ls in leases)
            assert all(ls.member.startswith("c1 ") for ls in leases)
            await check(f, enqueued=5, queued=2, inflight=3, done=0)

            links = [
                NewLink.of(normalize("http://b.example/new1"), 3),
                NewLink.of(normalize("http://b.example/new2"), 3),
                NewLink.of(seeds[4], 3),  # already seen: dropped
            ]
            assert await f.ack(leases[:2], links) == (2, 2)
            await check(f, enqueued=7, queued=4, inflight=1, done=2)
            assert await f.ack(leases[:2]) == (0, 0)  # acking twice counts once
            await check(f, enqueued=7, done=2)

            rest, _ = await f.lease(100, "c2", LONG_TTL_S)
            assert sorted(ls.url for ls in rest) == sorted(
                [seeds[3].url, seeds[4].url, "http://b.example/new1", "http://b.example/new2"]
            )
            assert {ls.depth for ls in rest if "b.example" in ls.url} == {3}
            await check(f, queued=0, inflight=5)
            assert await f.ack([leases[2], *rest]) == (5, 0)
            c = await check(f, enqueued=7, done=7, queued=0, inflight=0, deferred=0, dead=0)
            assert c.idle
            assert await f.lease(10, "c1", LONG_TTL_S) == ([], -1)
            # per-host in-flight bookkeeping is back to nothing
            assert await f.redis.hgetall(f.keys.host_inflight) == {}

    asyncio.run(main())


def test_token_with_space_refused(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            with pytest.raises(ValueError):
                await f.lease(1, "two words", LONG_TTL_S)

    asyncio.run(main())


def test_release_puts_back_without_attempt(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add(urls("a.example", 4))
            leases, _ = await f.lease(2, "c1", LONG_TTL_S)
            await check(f, queued=2, inflight=2)
            assert await f.release(leases) == 2
            c = await check(f, queued=4, inflight=0)
            assert c.retried == 0
            assert await f.release(leases) == 0  # no longer owned
            again, _ = await f.lease(2, "c2", LONG_TTL_S)
            # released entries went back to the front of their queue, attempts unchanged
            assert {ls.url for ls in again} == {ls.url for ls in leases}
            assert all(ls.attempts == 0 for ls in again)
            await check(f, queued=2, inflight=2)

    asyncio.run(main())


def test_defer_respects_due_time(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add(urls("a.example", 2))
            (later, soon), _ = await f.lease(2, "c1", LONG_TTL_S)
            future_s = time.time() + 3600
            assert await f.defer([Deferral(later, future_s, 1)]) == 1
            await check(f, queued=0, deferred=1, inflight=1)
            # not leasable before its due time; next_due says when it will be
            got, next_due = await f.lease(10, "c1", LONG_TTL_S)
            assert got == []
            assert next_due == int(future_s * 1000)

            past_s = time.time() - 10
            assert await f.defer([Deferral(soon, past_s, 2)]) == 1
            c = await check(f, deferred=2, inflight=0)
            assert c.retried == 2
            got, _ = await f.lease(10, "c1", LONG_TTL_S)
            assert [(ls.url, ls.attempts) for ls in got] == [(soon.url, 2)]  # the due one only
            await check(f, deferred=1, inflight=1, queued=0)
            assert await f.defer([Deferral(soon, past_s, 2)]) == 0  # a stale lease cannot be deferred again

            # time passes for the far one (its due time moves into the past): now it is leasable
            entry = f"0 1 {later.url}"
            assert await f.redis.zadd(f.keys.deferred, {entry: now_ms() - 1}, xx=True, ch=True) == 1
            got, _ = await f.lease(10, "c1", LONG_TTL_S)
            assert [(ls.url, ls.attempts) for ls in got] == [(later.url, 1)]
            await check(f, deferred=0, inflight=2, queued=0)

    asyncio.run(main())


def test_dead_letter_and_requeue(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add(urls("a.example", 3), depth=1)
            leases, _ = await f.lease(3, "c1", LONG_TTL_S)
            err = {"kind": "http", "status": 404, "message": "not found here"}
            before = now_ms()
            assert await f.dead([DeadLetter(leases[0], 4, err)]) == 1
            assert await f.dead([DeadLetter(leases[0], 4, err)]) == 0  # not owned any more
            await check(f, dead=1, inflight=2)
            entries = await f.dead_entries()
            assert len(entries) == 1
            e = entries[0]
            assert (e.url, e.depth, e.attempts, e.error) == (leases[0].url, 1, 4, err)
            assert before <= e.at_ms <= now_ms()
            await f.ack(leases[1:])
            await check(f, dead=1, done=2, inflight=0, queued=0)

            assert await f.requeue_dead() == 1
            await check(f, dead=0, queued=1)
            assert await f.dead_entries() == []
            again, _ = await f.lease(5, "c2", LONG_TTL_S)
            assert [(ls.url, ls.depth, ls.attempts) for ls in again] == [(leases[0].url, 1, 0)]
            assert await f.ack(again) == (1, 0)
            c = await check(f, enqueued=3, done=3, dead=0)
            assert c.idle

    asyncio.run(main())


def test_reclaim_requeues_expired_leases_with_an_attempt(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add(urls("a.example", 3))
            await f.add(urls("b.example", 2))
            expiring, _ = await f.lease(3, "dying", 0.001)
            live, _ = await f.lease(10, "alive", LONG_TTL_S)
            assert len(expiring) == 3 and len(live) == 2
            await wait_expired(f, expiring)
            assert await f.reclaim(max_attempts=3) == (3, 0)
            c = await check(f, queued=3, inflight=2, dead=0)
            assert c.retried == 3
            assert await f.reclaim(max_attempts=3) == (0, 0)  # idempotent; live leases untouched
            back, _ = await f.lease(10, "c2", LONG_TTL_S)
            assert sorted((ls.url, ls.attempts) for ls in back) == sorted((ls.url, 1) for ls in expiring)
            assert await f.ack(expiring) == (0, 0)  # the dead consumer's late ack does not count
            assert await f.ack(back + live) == (5, 0)
            assert (await check(f, done=5, enqueued=5)).idle

    asyncio.run(main())


def test_reclaim_on_last_attempt_dead_letters(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add(urls("a.example", 2), depth=4)
            leases, _ = await f.lease(2, "c1", 0.001)
            await wait_expired(f, leases)
            assert await f.reclaim(max_attempts=2) == (2, 0)  # first expiry: attempt 1 of 2
            second, _ = await f.lease(2, "c2", 0.001)
            assert {ls.attempts for ls in second} == {1}
            await wait_expired(f, second)
            assert await f.reclaim(max_attempts=2) == (0, 2)  # second expiry: dead
            await check(f, dead=2, queued=0, inflight=0)
            entries = sorted(await f.dead_entries(), key=lambda e: e.url)
            assert [e.url for e in entries] == sorted(ls.url for ls in leases)
            for e in entries:
                assert e.attempts == 2
                assert e.depth == 4
                assert e.error["kind"] == "lease_expired"
            assert await f.redis.hgetall(f.keys.host_inflight) == {}
            assert (await f.counters()).idle

    asyncio.run(main())


def test_renew_extends_owned_leases(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add(urls("a.example", 2))
            leases, _ = await f.lease(2, "c1", 5)
            before = [await deadline_of(f, ls) for ls in leases]
            assert await f.renew(leases, LONG_TTL_S) == []
            after = [await deadline_of(f, ls) for ls in leases]
            assert all(a is not None and b is not None and a > b + 50_000 for a, b in zip(after, before, strict=True))
            assert await f.renew([], LONG_TTL_S) == []
            await check(f, inflight=2)

    asyncio.run(main())


def test_renew_does_not_resurrect_reclaimed_lease(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add(urls("a.example", 1))
            await f.add(urls("b.example", 1))
            (short,), _ = await f.lease(1, "slow", 0.001)
            (long_,), _ = await f.lease(1, "slow", LONG_TTL_S)
            await wait_expired(f, [short])
            assert await f.reclaim(max_attempts=5) == (1, 0)
            lost = await f.renew([short, long_], LONG_TTL_S)
            assert lost == [short]
            assert await deadline_of(f, short) is None  # not resurrected in the leases zset
            assert await f.redis.zscore(f.keys.leases, short.member) is None
            d = await deadline_of(f, long_)
            assert d is not None and d > now_ms() + 50_000
            await check(f, queued=1, inflight=1)
            # someone else gets the URL again, with the attempt counted
            (again,), _ = await f.lease(1, "fresh", LONG_TTL_S)
            assert (again.url, again.attempts) == (short.url, 1)
            # the slow consumer's ack of its lost lease is not counted; the new owner's is
            assert await f.ack([short]) == (0, 0)
            await check(f, done=0, inflight=2)
            assert await f.ack([again, long_]) == (2, 0)
            assert (await check(f, done=2, enqueued=2)).idle

    asyncio.run(main())


def test_settle_in_one_round_trip(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add(urls("a.example", 4))
            a, b, c, d = (await f.lease(4, "c1", LONG_TTL_S))[0]
            acked = await f.settle(
                Settlement(
                    done=[a],
                    links=[NewLink.of(normalize("http://z.example/"), 1)],
                    deferred=[Deferral(b, time.time() + 3600, 1)],
                    dead=[DeadLetter(c, 3, {"kind": "http", "status": 410})],
                    released=[d],
                )
            )
            assert acked == 1
            await check(f, enqueued=5, done=1, deferred=1, dead=1, queued=2, inflight=0)
            assert await f.settle(Settlement()) == 0

    asyncio.run(main())


def test_single_host_batch_as_big_as_many_hosts(redis_server: Any, crawl_name: str) -> None:
    """Politeness (0, 0): one lease call returns a full batch whether the crawl has one host or a hundred."""

    async def main() -> None:
        batch, total = 100, 1000
        async with open_frontier(redis_server.url, crawl_name + "one", Politeness(0, 0)) as one:
            await one.add(urls("only.example", total))
            sizes = [len((await one.lease(batch, "c", LONG_TTL_S))[0]) for _ in range(total // batch)]
            assert sizes == [batch] * (total // batch)
            await check(one, inflight=total, queued=0)
        async with open_frontier(redis_server.url, crawl_name + "many", Politeness(0, 0)) as many:
            for h in range(100):
                await many.add(urls(f"h{h}.example", total // 100))
            sizes = [len((await many.lease(batch, "c", LONG_TTL_S))[0]) for _ in range(total // batch)]
            assert sizes == [batch] * (total // batch)
            await check(many, inflight=total, queued=0)

    asyncio.run(main())


def test_per_host_concurrency(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name, Politeness(2, 0)) as f:
            await f.add(urls("a.example", 6))
            await f.add(urls("b.example", 1))
            got, _ = await f.lease(10, "c1", LONG_TTL_S)
            assert sorted(ls.url.split("/")[2] for ls in got) == ["a.example", "a.example", "b.example"]
            more, next_due = await f.lease(10, "c2", LONG_TTL_S)
            assert more == []  # a.example is at its limit crawl-wide, whoever asks
            assert next_due > 0  # work is queued: look again later
            assert await f.redis.hget(f.keys.host_inflight, "a.example") == b"2"
            first_a = next(ls for ls in got if "a.example" in ls.url)
            await f.ack([first_a])
            more, _ = await f.lease(10, "c2", LONG_TTL_S)
            assert len(more) == 1 and "a.example" in more[0].url
            await check(f, queued=3, inflight=3, done=1)

    asyncio.run(main())


def test_per_host_delay(redis_server: Any, crawl_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 200 ms delay, two leases of one host are never closer than 200 ms on the frontier's clock."""
    delay_ms, per_host = 200, 3
    calls: list[int] = []
    real_now = frontier_mod.now_ms

    def recording_now() -> int:  # the `now` each lease call hands to the script
        calls.append(real_now())
        return calls[-1]

    monkeypatch.setattr(frontier_mod, "now_ms", recording_now)

    async def main() -> dict[str, list[int]]:
        leased: dict[str, list[int]] = {}
        async with open_frontier(redis_server.url, crawl_name, Politeness(0, delay_ms)) as f:
            await f.add(urls("a.example", per_host))
            await f.add(urls("b.example", per_host))
            first, _ = await f.lease(10, "c", LONG_TTL_S)
            t_first = calls[-1]
            assert sorted(ls.url.split("/")[2] for ls in first) == ["a.example", "b.example"]  # one per host
            again, next_due = await f.lease(10, "c", LONG_TTL_S)
            assert again == []
            assert next_due == t_first + delay_ms
            for ls in first:
                leased.setdefault(ls.url.split("/")[2], []).append(t_first)
            await f.ack(first)
            give_up = time.monotonic() + 10
            while sum(len(v) for v in leased.values()) < 2 * per_host:
                assert time.monotonic() < give_up, leased
                got, next_due = await f.lease(10, "c", LONG_TTL_S)
                t = calls[-1]
                hosts = [ls.url.split("/")[2] for ls in got]
                assert len(hosts) == len(set(hosts))  # never two of one host in one call
                for h in hosts:
                    leased[h].append(t)
                await f.ack(got)
                if not got:
                    await asyncio.sleep(max(0.0, min(next_due - now_ms(), 50) / 1000))
            await check(f, done=2 * per_host)
        return leased

    leased = asyncio.run(main())
    for host, times in leased.items():
        assert len(times) == per_host, host
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= delay_ms, (host, gaps)


def test_per_host_delay_survives_an_empty_queue(redis_server: Any, crawl_name: str) -> None:
    """A host whose queue ran dry and gets new work at once (a link, a release) still waits out its delay."""

    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name, Politeness(0, 60_000)) as f:
            await f.add(urls("a.example", 1))
            (first,), _ = await f.lease(10, "c", LONG_TTL_S)
            # the queue is empty now; a new link for the host arrives with the ack
            assert await f.ack([first], [NewLink.of(normalize("http://a.example/new"), 1)]) == (1, 1)
            got, next_due = await f.lease(10, "c", LONG_TTL_S)
            assert got == []
            assert next_due >= now_ms() + 50_000
            await f.add(urls("a.example", 1, start=5))
            assert (await f.lease(10, "c", LONG_TTL_S))[0] == []
            await check(f, queued=2, done=1)

    asyncio.run(main())
