"""User data (and label, headers, kind) travelling with a URL through every frontier operation, on a real Redis.

Each test sends URLs with extras and URLs without through one operation (add, lease, defer, release, reclaim,
dead-letter, requeue_dead, ack with new links, renew) and reads them back from the leases: the extras come back
equal, the attempt counts the scripts rewrite are right, and an entry without extras is stored exactly as before
(no trailing field: memory per URL does not grow). The counter invariant is checked after each step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from crawler.entries import MAX_DATA_BYTES, Extras, InvalidExtras, entry
from crawler.frontier import DeadLetter, Deferral, Frontier, Lease, NewLink, Settlement
from crawler.urls import crawl_url
from tests.test_frontier import LONG_TTL_S, check, open_frontier, wait_expired

pytestmark = pytest.mark.timeout(60)

RICH = Extras(
    data={"category": "Books & more", "page": 2, "nested": {"list": [1, "two", None]}, "text": 'a b\nc\t"é\u2028'},
    label="listing",
    headers={"X-Token": "t0k", "Accept-Language": "fr"},
    kind="sitemap",
    nesting=2,
    for_host="shop.test:443",
)
ONLY_DATA = Extras(data={"k": "v"})


async def seed(f: Frontier) -> None:
    """Three URLs on one host: one with every extra, one with data only, one with none."""
    assert await f.add([crawl_url("http://x.example/rich?s=a&p=2")], extras=RICH) == 1
    assert await f.add([crawl_url("http://x.example/data")], extras=ONLY_DATA) == 1
    assert await f.add([crawl_url("http://x.example/plain")]) == 1


def by_url(leases: list[Lease]) -> dict[str, Lease]:
    return {ls.url: ls for ls in leases}


def assert_extras(leases: list[Lease], attempts: int) -> None:
    got = by_url(leases)
    assert set(got) == {"http://x.example/rich?s=a&p=2", "http://x.example/data", "http://x.example/plain"}
    rich, data, plain = (
        got["http://x.example/rich?s=a&p=2"],
        got["http://x.example/data"],
        got["http://x.example/plain"],
    )
    assert rich.extras == RICH
    assert rich.extras_json == RICH.encode()  # byte for byte as stored: hand it to the parse pool as it is
    assert (rich.data, rich.label, rich.headers, rich.kind) == (RICH.data, "listing", RICH.headers, "sitemap")
    assert data.extras == ONLY_DATA and data.label is None and data.headers is None
    assert plain.extras is None and plain.data is None and plain.kind is None
    assert plain.member.endswith(" http://x.example/plain")  # nothing after the URL
    assert {ls.attempts for ls in leases} == {attempts}


async def lease_all(f: Frontier, token: str = "w1", ttl_s: float = LONG_TTL_S) -> list[Lease]:
    leases, _ = await f.lease(10, token, ttl_s)
    return leases


def run(redis_server: Any, crawl_name: str, body: Any) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            await seed(f)
            await body(f)

    asyncio.run(main())


def test_entry_without_extras_is_unchanged() -> None:
    assert entry("http://a.example/", 2, 1) == "2 1 http://a.example/"
    assert entry("http://a.example/", 2, 1, ONLY_DATA.encode()) == '2 1 http://a.example/ {"data":{"k":"v"}}'
    assert Extras().encode() == ""
    assert "\n" not in RICH.encode()  # entries are joined by newlines in the add script's argument


def test_lease_defer_and_lease_again(redis_server: Any, crawl_name: str) -> None:
    async def body(f: Frontier) -> None:
        leases = await lease_all(f)
        assert_extras(leases, 0)
        assert await f.defer([Deferral(ls, time.time() - 1, 2) for ls in leases]) == 3
        await check(f, deferred=3, inflight=0)
        again = await lease_all(f, "w2")  # due retries go back to the queue first
        assert_extras(again, 2)
        await check(f, inflight=3)

    run(redis_server, crawl_name, body)


def test_release_keeps_extras_and_attempts(redis_server: Any, crawl_name: str) -> None:
    async def body(f: Frontier) -> None:
        assert await f.release(await lease_all(f)) == 3
        await check(f, queued=3, inflight=0)
        assert_extras(await lease_all(f, "w2"), 0)

    run(redis_server, crawl_name, body)


def test_reclaim_then_dead_letter_then_requeue(redis_server: Any, crawl_name: str) -> None:
    async def body(f: Frontier) -> None:
        leases = await lease_all(f, ttl_s=0.001)
        await wait_expired(f, leases)
        assert await f.reclaim(max_attempts=3) == (3, 0)  # back in the queue with one attempt more
        leases = await lease_all(f, "w2", ttl_s=0.001)
        assert_extras(leases, 1)
        await wait_expired(f, leases)
        assert await f.reclaim(max_attempts=2) == (0, 3)  # the last attempt: dead-lettered
        await check(f, dead=3, queued=0, inflight=0)
        dead = {d.url: d for d in await f.dead_entries()}
        assert dead["http://x.example/rich?s=a&p=2"].extras == RICH
        assert dead["http://x.example/rich?s=a&p=2"].error["kind"] == "lease_expired"
        assert dead["http://x.example/plain"].extras is None
        assert await f.requeue_dead() == 3
        await check(f, dead=0, queued=3)
        assert_extras(await lease_all(f, "w3"), 0)  # a fresh attempt count

    run(redis_server, crawl_name, body)


def test_dead_letter_by_the_worker_and_requeue(redis_server: Any, crawl_name: str) -> None:
    async def body(f: Frontier) -> None:
        leases = await lease_all(f)
        err = {"kind": "http_status", "status": 404, "message": "not found\nat all"}
        assert await f.dead([DeadLetter(ls, 4, err) for ls in leases]) == 3
        dead = {d.url: d for d in await f.dead_entries()}
        assert {d.attempts for d in dead.values()} == {4}
        assert dead["http://x.example/rich?s=a&p=2"].error == err
        assert dead["http://x.example/rich?s=a&p=2"].extras == RICH
        assert dead["http://x.example/data"].extras == ONLY_DATA
        assert dead["http://x.example/plain"].extras is None
        assert await f.requeue_dead() == 3
        assert_extras(await lease_all(f, "w2"), 0)
        await check(f, inflight=3, dead=0)

    run(redis_server, crawl_name, body)


def test_renew_reports_lost_leases_with_their_extras(redis_server: Any, crawl_name: str) -> None:
    async def body(f: Frontier) -> None:
        leases = await lease_all(f, ttl_s=0.001)
        await wait_expired(f, leases)
        assert await f.reclaim(max_attempts=5) == (3, 0)
        lost = await f.renew(leases, LONG_TTL_S)
        assert_extras(lost, 0)  # the lost leases as they were leased

    run(redis_server, crawl_name, body)


def test_links_carry_extras_and_priority(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with open_frontier(redis_server.url, crawl_name) as f:
            assert await f.add([crawl_url("http://y.example/start")]) == 1
            (start,) = await lease_all(f)
            links = [
                NewLink.of(crawl_url("http://y.example/back"), 1),
                NewLink.of(crawl_url("http://y.example/rich"), 1, RICH),
                NewLink.of(crawl_url("http://y.example/first"), 1, ONLY_DATA, front=True),
                NewLink.of(crawl_url("http://y.example/back?"), 1),  # the same dedup key as /back
            ]
            assert await f.ack([start], links) == (1, 3)
            await check(f, done=1, queued=3)
            leased = await lease_all(f)
            assert [(ls.url, ls.extras, ls.depth) for ls in leased] == [
                ("http://y.example/first", ONLY_DATA, 1),  # asked for the head of the queue
                ("http://y.example/back", None, 1),
                ("http://y.example/rich", RICH, 1),
            ]
            # settle takes the same path, in one round trip with the acks
            more = [NewLink.of(crawl_url("http://y.example/more"), 2, RICH, front=True)]
            assert await f.settle(Settlement(leased, more)) == 3
            await check(f, done=4, queued=1)
            assert [(ls.url, ls.extras) for ls in await lease_all(f)] == [("http://y.example/more", RICH)]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("extras", "reason"),
    [
        (lambda: Extras(data={"x": "y" * MAX_DATA_BYTES}), "over the 8192-byte limit"),
        (lambda: Extras(data=["not", "an", "object"]), "JSON object"),  # type: ignore[arg-type]
        (lambda: Extras(data={"x": {1, 2}}), "not JSON-serialisable"),
        (lambda: Extras(data={"x": float("nan")}), "not JSON-serialisable"),
        (lambda: Extras(label=""), "label"),
        (lambda: Extras(headers={"Bad Name": "v"}), "header name"),
        (lambda: Extras(headers={"X-A": "v\r\nInjected: 1"}), "header X-A"),
        (lambda: Extras(kind="sitemap", nesting=-1), "nesting"),
        (lambda: Extras(kind="sitemap", nesting=True), "nesting"),
        (lambda: Extras(kind="sitemap", nesting="2"), "nesting"),  # type: ignore[arg-type]
        (lambda: Extras(kind="sitemap", for_host="h" * 301), "for_host"),
        (lambda: Extras(kind="sitemap", for_host=""), "for_host"),
    ],
)
def test_bad_extras_are_refused(extras: Any, reason: str) -> None:
    with pytest.raises(InvalidExtras, match=reason):
        extras().encode()


def test_a_link_with_too_much_data_is_refused_where_it_is_made() -> None:
    with pytest.raises(InvalidExtras, match="8192-byte limit"):
        NewLink.of(crawl_url("http://x.example/"), 1, Extras(data={"x": "y" * MAX_DATA_BYTES}))


def test_header_values_are_never_printed() -> None:
    shown = repr(Extras(headers={"Authorization": "Bearer s3cr3t-token", "Cookie": "sid=hunter2"}))
    assert "s3cr3t" not in shown and "hunter2" not in shown and "Authorization" in shown
