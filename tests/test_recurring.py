"""Recurring URLs (`--every`) against a real Redis: every pass goes through the frontier's queues, the stored
validators come back with the next lease, a dead-lettered pass keeps the schedule, cancel stops it, extras
survive every pass, and the counters add up after each step (enqueued = done + dead + queued + deferred +
inflight + scheduled). Periods are 1 s and the next pass is waited for by polling with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from crawler.entries import Extras
from crawler.frontier import Counters, DeadLetter, Deferral, Frontier, Lease, Settlement, now_ms
from crawler.recurring import Recurring
from crawler.schedule import (
    JITTER,
    InvalidDuration,
    RecurState,
    Validators,
    body_digest,
    format_duration,
    next_due_ms,
    parse_duration,
)
from crawler.testing.services import start_server
from crawler.urls import crawl_url
from tests.helpers import crawl, read_records, stats, worker_args
from tests.test_frontier import LONG_TTL_S, check, open_frontier, wait_expired

pytestmark = pytest.mark.timeout(60)

DATA = Extras(data={"sku": "A 1", "n": [1, 2]}, label="product")
LM = "Tue, 01 Dec 2026 10:00:00 GMT"


async def lease_all(
    f: Frontier, want: int, token: str = "w1", timeout_s: float = 5.0, ttl_s: float = LONG_TTL_S
) -> list[Lease]:
    """Lease until `want` leases came back (a pass falls due after its period), or fail at the deadline."""
    got: list[Lease] = []
    give_up = time.monotonic() + timeout_s
    while len(got) < want:
        assert time.monotonic() < give_up, f"only {len(got)} of {want} leases came back"
        leases, _ = await f.lease(want - len(got), token, ttl_s)
        got += leases
        if not leases:
            await asyncio.sleep(0.02)  # polling the frontier's clock, not synchronisation
    return got


async def consistent(f: Frontier, **expected: int) -> Counters:
    c = await check(f)  # the old invariant's checks (queued lists match the counter), then the full one
    assert c.consistent, c
    assert c.enqueued == c.done + c.dead + c.queued + c.deferred + c.inflight + c.scheduled, c
    for name, value in expected.items():
        assert getattr(c, name) == value, (name, c)
    return c


# ----------------------------------------------------------------------------------------------- pure parts
def test_durations() -> None:
    assert [parse_duration(t) for t in ("30s", "15m", "6h", "1d", "1w", "1h30m", "90", " 2H ")] == [
        30,
        900,
        21600,
        86400,
        604800,
        5400,
        90,
        7200,
    ]
    assert parse_duration(45) == 45
    for bad in ("", "soon", "5x", "1.5h", "-1s", "0s", "1h 30m", "400d", True, 1.5, None, [1]):
        with pytest.raises(InvalidDuration):
            parse_duration(bad)
    assert [format_duration(s) for s in (90, 86400, 5400, 30)] == ["1m30s", "1d", "1h30m", "30s"]


def test_jitter_spreads_within_ten_percent() -> None:
    rng = random.Random(7)
    dues = [next_due_ms(1_000_000, 3600, rng) - 1_000_000 for _ in range(2000)]
    assert all(3600_000 * (1 - JITTER) <= d <= 3600_000 * (1 + JITTER) for d in dues)
    assert max(dues) - min(dues) > 3600_000 * JITTER  # spread out, not one second


def test_recur_state_codec() -> None:
    fresh = RecurState(30)
    assert fresh.encode() == "30 0" and RecurState.decode("30 0") == fresh
    full = RecurState(30, 2).with_validators(Validators('W/"a b"', LM, "9f86d081884c7d65"))
    assert full.etag == 'W/"a b"' and full.last_modified == LM and full.digest == "9f86d081884c7d65"
    assert RecurState.decode(full.encode()) == full
    assert full.conditional_headers() == {"If-None-Match": 'W/"a b"', "If-Modified-Since": LM}
    assert fresh.conditional_headers() == {} and fresh.changed(body_digest(b"x"))
    assert not full.changed("9f86d081884c7d65") and full.changed(body_digest(b"x"))
    assert body_digest(b"same") == body_digest(b"same") != body_digest(b"other")
    assert len(body_digest(b"")) == 16
    # unusable validators are dropped, never raised: a bad date, an etag with a TAB, a digest with a space
    odd = RecurState(30).with_validators(Validators('"x\ty"', "yesterday", "a b"))
    assert (odd.etag, odd.last_modified, odd.digest) == (None, None, None)
    assert RecurState.decode(odd.encode()) == RecurState(30)


# -------------------------------------------------------------------------------------------- the frontier
def test_recurring_url_comes_back_with_its_validators_and_extras(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            assert await f.add([crawl_url("http://m.example/price")], extras=DATA, every_s=1) == 1
            assert await f.add([crawl_url("http://m.example/stock")], every_s=1) == 1
            assert await f.add([crawl_url("http://m.example/once")]) == 1
            await consistent(f, enqueued=3, queued=3, recurring=2, scheduled=0)

            first = {ls.url: ls for ls in await lease_all(f, 3)}
            price, stock, once = (first[f"http://m.example/{p}"] for p in ("price", "stock", "once"))
            assert price.recur == RecurState(1) and stock.recur == RecurState(1) and once.recur is None
            assert price.extras == DATA and price.extras_json == DATA.encode()
            v = Validators('"v1"', LM, "d1")
            before = now_ms()
            assert await f.settle(Settlement(done=[price, stock, once], validators={price.member: v})) == 3
            c = await consistent(f, done=1, passes=2, scheduled=2, inflight=0, queued=0, recurring=2)
            assert c.idle and c.next_pass_ms is not None
            rows = {r.url: r for r in await Recurring(f).waiting()}
            assert set(rows) == {price.url, stock.url}
            for r in rows.values():  # never early; late by at most the time wheel's one-second buckets
                assert before + 1000 * (1 - JITTER) <= r.due_ms <= now_ms() + 1000 * (1 + JITTER) + 1000
            assert rows[price.url].recur.etag == '"v1"' and rows[price.url].extras_json == DATA.encode()

            second = {ls.url: ls for ls in await lease_all(f, 2)}  # due again after the period
            p2, s2 = second[price.url], second[stock.url]
            assert p2.recur is not None and s2.recur is not None
            assert (p2.recur.etag, p2.recur.last_modified, p2.recur.digest) == ('"v1"', LM, "d1")
            assert (s2.recur.etag, s2.recur.last_modified, s2.recur.digest) == (None, None, None)
            assert p2.extras == DATA and p2.attempts == 0 and p2.depth == 0
            await consistent(f, inflight=2, scheduled=0, passes=2, done=1)

            # a 304: no validators given, the stored ones are kept; new ones replace all three
            v2 = Validators(None, formatdate(1_700_000_000, usegmt=True), "d2")
            await f.ack([p2, s2], validators={s2.member: v2})
            await consistent(f, passes=4, scheduled=2, done=1)
            third = {ls.url: ls for ls in await lease_all(f, 2)}
            assert third[price.url].recur == p2.recur
            s3 = third[stock.url].recur
            assert s3 is not None and (s3.etag, s3.last_modified_s, s3.digest) == (None, 1_700_000_000, "d2")
            assert third[price.url].extras == DATA

    asyncio.run(main())


def test_a_dead_pass_keeps_the_schedule(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add([crawl_url("http://d.example/page")], extras=DATA, every_s=1)
            (ls,) = await lease_all(f, 1)
            await f.ack([ls], validators={ls.member: Validators('"e"', None, "x")})
            (ls,) = await lease_all(f, 1)
            assert await f.dead([DeadLetter(ls, 3, {"kind": "http", "status": 503})]) == 1
            await consistent(f, dead=0, failed_passes=1, scheduled=1, passes=1, recurring=1)
            (entry,) = await f.dead_entries()  # `crawl dead` shows the failure
            assert entry.url == ls.url and entry.error == {"kind": "http", "status": 503, "recurring": True}
            assert entry.extras == DATA
            # requeue_dead does not queue a scheduled URL twice: it only clears the failure
            assert await f.requeue_dead() == 0
            assert await f.dead_entries() == []
            await consistent(f, scheduled=1, queued=0)

            (again,) = await lease_all(f, 1)  # the next period tries again, fresh attempts, same validators
            assert again.attempts == 0 and again.extras == DATA
            assert again.recur is not None and again.recur.etag == '"e"' and again.recur.digest == "x"
            assert await f.dead([DeadLetter(again, 3, {"kind": "timeout"})]) == 1
            (back,) = await lease_all(f, 1)
            await f.ack([back])
            assert await f.dead_entries() == []  # a pass that succeeds clears the earlier failure
            await consistent(f, dead=0, failed_passes=2, passes=2, scheduled=1)

    asyncio.run(main())


def test_retries_releases_and_reclaims_keep_the_schedule(redis_server: Any, crawl_name: str) -> None:
    """A pass that is retried later, handed back or reclaimed is still the same pass: the lease comes back with
    its schedule, validators and extras, and counts as deferred, queued or in flight meanwhile."""

    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add([crawl_url("http://k.example/a")], extras=DATA, every_s=1)
            (ls,) = await lease_all(f, 1)
            await f.ack([ls], validators={ls.member: Validators('"k"', LM, "dd")})
            (ls,) = await lease_all(f, 1)
            state = ls.recur
            await f.defer([Deferral(ls, time.time() - 1, 1)])
            await consistent(f, deferred=1, scheduled=0)
            (ls,) = await lease_all(f, 1)
            assert ls.attempts == 1 and ls.recur == state and ls.extras == DATA
            await f.release([ls])
            await consistent(f, queued=1)
            (ls,) = await lease_all(f, 1, ttl_s=0.001)
            await wait_expired(f, [ls])
            assert await f.reclaim(max_attempts=5) == (1, 0)
            (ls,) = await lease_all(f, 1)
            assert ls.attempts == 2 and ls.recur == state and ls.extras == DATA
            await f.ack([ls])
            await consistent(f, passes=2, scheduled=1, recurring=1, done=0, retried=2)

    asyncio.run(main())


def test_reclaim_on_the_last_attempt_keeps_the_schedule(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add([crawl_url("http://r.example/a")], every_s=1)
            await f.add([crawl_url("http://r.example/b")])
            leases, _ = await f.lease(2, "w1", 0.001)
            await wait_expired(f, leases)
            assert await f.reclaim(max_attempts=1) == (0, 2)
            await consistent(f, dead=1, failed_passes=1, scheduled=1, recurring=1)
            (back,) = await lease_all(f, 1)
            assert back.url == "http://r.example/a" and back.attempts == 0

    asyncio.run(main())


def test_cancel_one_and_all(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            waiting, leased = crawl_url("http://c.example/w"), crawl_url("http://c.example/l")
            await f.add([waiting, leased], every_s=1)
            await f.ack(await lease_all(f, 2))
            assert len(await Recurring(f).waiting()) == 2
            # waiting for its next pass: stopped now, done
            assert await Recurring(f).cancel(waiting.url) == (1, False)
            await consistent(f, done=1, scheduled=1, recurring=1)
            # in a pass: marked, and the pass's ack ends the schedule
            (ls,) = await lease_all(f, 1)
            assert await Recurring(f).cancel(leased.url) == (0, True)
            await f.ack([ls])
            await consistent(f, done=2, scheduled=0, recurring=0, inflight=0)
            assert await Recurring(f).cancel("http://c.example/never") == (0, False)
            assert await Recurring(f).cancel(waiting.url) == (0, False)  # its schedule is over
            await f.add([crawl_url("http://c.example/plain")])
            assert await Recurring(f).cancel("http://c.example/plain") == (0, False)  # queued, but never recurred
            (plain,) = await lease_all(f, 1)
            await f.ack([plain])
            # queued and deferred passes are found too
            await f.add([crawl_url("http://c.example/q"), crawl_url("http://c.example/d")], every_s=1)
            by = {ls.url: ls for ls in await lease_all(f, 2)}
            await f.release([by["http://c.example/q"]])
            await f.defer([Deferral(by["http://c.example/d"], time.time() - 1, 1)])  # in `deferred` until a lease
            assert await Recurring(f).cancel("http://c.example/q") == (0, True)
            assert await Recurring(f).cancel("http://c.example/d") == (0, True)
            await f.ack(await lease_all(f, 2))
            await consistent(f, done=5, scheduled=0, recurring=0, inflight=0, deferred=0)

            more = [crawl_url(f"http://c.example/m{i}") for i in range(3)]
            await f.add(more, every_s=1)
            first = await lease_all(f, 3)
            await f.ack(first[:2])  # two wait, one is in its pass
            assert await Recurring(f).cancel_all() == 2
            await f.ack(first[2:])  # enqueued under the old generation: its schedule ends too
            await consistent(f, done=8, scheduled=0, recurring=0)
            # a URL enqueued after --all recurs again
            await f.add([crawl_url("http://c.example/new")], every_s=1)
            await f.ack(await lease_all(f, 1))
            await consistent(f, done=8, scheduled=1, recurring=1)

    asyncio.run(main())


def test_idle_horizon(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await f.add([crawl_url("http://i.example/a")], every_s=60)
            c = await f.counters()
            assert not c.idle_within(0)  # queued
            (ls,) = await lease_all(f, 1)
            assert not (await f.counters()).idle_within(0)  # in flight
            await f.ack([ls])
            c = await consistent(f, scheduled=1)
            assert c.next_pass_ms is not None and c.due == 0
            assert c.idle_within(0)  # nothing due now: --until-idle may stop
            assert c.idle_within(30)  # due in ~60 s (54-66 with jitter)
            assert not c.idle_within(120)  # a worker with --idle-horizon 120 waits for it
            assert c.idle_within(0, at_ms=c.next_pass_ms - 1)
            assert not c.idle_within(0, at_ms=c.next_pass_ms)
            # the lease script says when to look again: the scheduled pass
            leases, next_due = await f.lease(5, "w1", LONG_TTL_S)
            assert leases == [] and next_due == c.next_pass_ms

    asyncio.run(main())


MEMORY_URLS = 10_000  # test-sized; `crawl`'s report gives the 100k figure (same per-URL cost: a skiplist zset)


def test_memory_per_recurring_url(redis_server: Any, crawl_name: str) -> None:
    """A recurring URL waiting for its next pass costs its entry in the time wheel (with its validators):
    measured with MEMORY USAGE (all samples) over every schedule key, on URLs of realistic length, it is at most
    200 bytes."""

    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            seeds = [
                crawl_url(f"https://shop{i % 50}.example.com/products/category-{i % 97}/item-{i:07d}?variant=blue")
                for i in range(MEMORY_URLS)
            ]
            for start in range(0, len(seeds), 2000):
                await f.add(seeds[start : start + 2000], every_s=21600)
            v = Validators('"5f8e2a1c-3b9d"', LM, "9f86d081884c7d65")
            leased = 0
            while leased < MEMORY_URLS:
                batch, _ = await f.lease(1000, "w1", LONG_TTL_S)
                assert batch
                await f.ack(batch, validators={ls.member: v for ls in batch})
                leased += len(batch)
            await consistent(f, scheduled=MEMORY_URLS, passes=MEMORY_URLS)
            used = 0
            async for key in f.redis.scan_iter(match=f.keys.prefix + "recur*", count=1000):
                size = await f.redis.memory_usage(key, samples=0)
                assert size is not None
                used += size
            per_url = used / MEMORY_URLS
            print(f"schedule: {used} B for {MEMORY_URLS} URLs = {per_url:.0f} B per recurring URL")
            assert per_url <= 200, per_url
            sample = (await Recurring(f).waiting(1))[0].recur
            assert (sample.etag, sample.last_modified, sample.digest) == ('"5f8e2a1c-3b9d"', LM, "9f86d081884c7d65")

    asyncio.run(main())


# --------------------------------------------------------------------------------------------------- the CLI
def _cli(redis_server: Any, crawl_name: str, *args: str) -> Any:
    return crawl([*args, "--redis", redis_server.url, "--crawl", crawl_name], timeout_s=60)


def test_cli_enqueue_every_and_schedule(redis_server: Any, crawl_name: str, tmp_path: Path) -> None:
    seeds = tmp_path / "watch.txt"
    seeds.write_text(
        "http://s.example/a\n"
        '{"url": "http://s.example/b", "every": "1h", "data": {"k": 1}}\n'
        '{"url": "http://s.example/c", "every": "soon"}\n'
    )
    run = _cli(redis_server, crawl_name, "enqueue", "--every", "30s", str(seeds))
    assert run.returncode == 0, run.stderr
    assert "added=2 " in run.stdout and "invalid=1" in run.stdout
    assert ":3: invalid line: every: bad duration 'soon'" in run.stderr

    async def one_pass() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            leases = await lease_all(f, 2)
            assert {ls.url: ls.recur.every_s for ls in leases if ls.recur} == {
                "http://s.example/a": 30,
                "http://s.example/b": 3600,
            }
            await f.ack(leases)
            listed = await _listing(redis_server, crawl_name)
            assert [r["url"] for r in listed] == ["http://s.example/a", "http://s.example/b"]  # earliest first
            assert [r["every_s"] for r in listed] == [30, 3600]
            text = _cli(redis_server, crawl_name, "schedule")
            assert text.returncode == 0 and "recurring=2 scheduled=2 due=0 shown=2" in text.stdout
            assert "every 30s\thttp://s.example/a" in text.stdout
            stats = json.loads(_cli(redis_server, crawl_name, "stats", "--json").stdout)
            assert (stats["recurring"], stats["scheduled"], stats["passes"], stats["consistent"]) == (2, 2, 2, True)
            assert "recurring=2 scheduled=2" in _cli(redis_server, crawl_name, "stats").stdout

            cancel = _cli(redis_server, crawl_name, "schedule", "--cancel", "http://S.example/a")
            assert cancel.returncode == 0 and "cancelled http://s.example/a" in cancel.stdout
            assert [r["url"] for r in await _listing(redis_server, crawl_name)] == ["http://s.example/b"]
            gone = _cli(redis_server, crawl_name, "schedule", "--cancel", "http://s.example/zzz")
            assert gone.returncode == 2 and gone.stderr.count("\n") == 1
            assert "cancelled=1" in _cli(redis_server, crawl_name, "schedule", "--all").stdout
            assert await _listing(redis_server, crawl_name) == []
            c = await consistent(f, done=2, recurring=0, scheduled=0)
            assert c.passes == 2

    asyncio.run(one_pass())


async def _listing(redis_server: Any, crawl_name: str) -> list[dict[str, Any]]:
    run = await asyncio.to_thread(_cli, redis_server, crawl_name, "schedule", "--json", "--limit", "10")
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_cli_schedule_cancel_and_all_together_is_an_error(redis_server: Any, crawl_name: str) -> None:
    run = _cli(redis_server, crawl_name, "schedule", "--cancel", "http://s.example/a", "--all")
    assert run.returncode == 2 and run.stderr == "crawl: error: give --cancel URL or --all, not both\n"


@pytest.mark.parametrize("bad", ["5x", "0s", "1.5h", ""])
def test_cli_bad_duration_is_one_line(redis_server: Any, crawl_name: str, tmp_path: Path, bad: str) -> None:
    seeds = tmp_path / "s.txt"
    seeds.write_text("http://s.example/a\n")
    run = _cli(redis_server, crawl_name, "enqueue", "--every", bad, str(seeds))
    assert run.returncode == 2
    assert run.stderr.startswith("crawl: error: --every: ") and run.stderr.count("\n") == 1, run.stderr
    assert "Traceback" not in run.stderr


# ------------------------------------------------------------------------------------------- the real worker
def test_worker_fetches_a_recurring_url_on_each_pass(redis_server: Any, crawl_name: str, tmp_path: Path) -> None:
    """The worker as it is (before the conditional-request half is wired): each `--until-idle` run fetches the
    passes that are due and stops when the next one is not; the schedule and the counters hold across runs."""
    with start_server("crawler.testing.site_server", "--port", 0, "--pages", 5, "--seed", 3) as site:
        seeds = tmp_path / "watch.txt"
        seeds.write_text(site.url + "/p/0\n")
        run = _cli(redis_server, crawl_name, "enqueue", "--every", "1s", str(seeds))
        assert run.returncode == 0 and "added=1 " in run.stdout, run.stderr
        args = worker_args(redis_server.url, crawl_name, tmp_path / "out", "--until-idle", "--no-follow")
        for passes in (1, 2):
            run = crawl(args, timeout_s=60)
            assert run.returncode == 0, run.stdout + run.stderr
            s = stats(redis_server.url, crawl_name)
            assert (s["passes"], s["scheduled"], s["done"], s["consistent"]) == (passes, 1, 0, True), s
            give_up = time.monotonic() + 5
            while stats(redis_server.url, crawl_name)["next_pass_in_s"] > 0:  # poll until the pass is due
                assert time.monotonic() < give_up, "the next pass never came due"
    records = read_records(tmp_path / "out")
    assert [r["url"] for r in records] == [site.url + "/p/0"] * 2
    assert all(r["status"] == 200 for r in records)
