"""A Hypothesis state machine drives the frontier against a real Redis and checks it after every step.

Rules: add, lease (long ttl), lease with a ttl so small it is expired almost at once, ack (with new links),
release, defer (due in the past or the future), dead-letter, reclaim (polling until the tiny leases have expired),
renew, late acks of lost leases, requeue of the dead. Politeness is 2 leases per host, so blocked hosts are
exercised too.

After every step the machine reads each URL's state back from Redis (`q:<host>` lists, `deferred` zset, `leases`
zset, `dead` hash; done is what the model saw acked) and checks: no URL is in two states at once, every added URL
is in exactly one, the counters equal those sizes and add up, and per-host in-flight counts match the leases.
A lease call must also return exactly as many URLs as the politeness limit allows, and each with the attempt
count the model expects.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any, ClassVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from crawler.frontier import DeadLetter, Deferral, Frontier, Lease, NewLink, Politeness, now_ms
from crawler.urls import normalize

pytestmark = pytest.mark.timeout(120)

HOSTS = [f"h{i}.example" for i in range(4)]
PATHS = 10
PHC = 2
MAX_ATTEMPTS = 3
LONG_TTL_S = 120.0
TINY_TTL_S = 0.001

url_ids = st.tuples(st.integers(0, len(HOSTS) - 1), st.integers(0, PATHS - 1))


def url_of(ids: tuple[int, int]) -> str:
    return f"http://{HOSTS[ids[0]]}/p{ids[1]}"


def host(url: str) -> str:
    return url.split("/")[2]


def url_of_entry(entry: bytes | str) -> str:
    text = entry.decode() if isinstance(entry, bytes) else entry
    return text.split(" ", 2)[2]  # "<depth> <attempts> <url>"


class FrontierMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(self.redis_url)
        self.crawl = "sm" + uuid.uuid4().hex[:10]
        self.f = Frontier(self.client, self.crawl, Politeness(PHC, 0))
        self.added: set[str] = set()  # every URL the frontier accepted
        self.done: set[str] = set()  # acked
        self.attempts: dict[str, int] = {}  # attempts the next lease of a URL must show
        self.held: dict[str, Lease] = {}  # url -> owned lease (long ttl)
        self.expiring: dict[str, Lease] = {}  # url -> owned lease with a tiny ttl, waiting for reclaim
        self.lost: list[Lease] = []  # leases reclaimed from under their consumer
        self.calls = 0  # one consumer token per lease call, so a lease's identity is never reused

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.f.purge())
            self.run(self.client.aclose())
        finally:
            for task in asyncio.all_tasks(self.loop):  # only left over when a step failed mid-call
                task.cancel()
            self.loop.close()

    # -- reading the state back ---------------------------------------------------------------------------------
    async def _states(self) -> dict[str, list[str]]:
        r, k = self.client, self.f.keys
        queued: list[str] = []
        async for key in r.scan_iter(match=k.prefix + "q:*", count=1000):
            queued += [url_of_entry(e) for e in await r.lrange(key, 0, -1)]
        return {
            "queued": queued,
            "deferred": [url_of_entry(e) for e in await r.zrange(k.deferred, 0, -1)],
            "leased": [url_of_entry(m.split(b" ", 1)[1]) for m in await r.zrange(k.leases, 0, -1)],
            "dead": [u.decode() for u in await r.hkeys(k.dead)],
            "done": sorted(self.done),
        }

    def _pick(self, pool: dict[str, Lease], picks: list[int]) -> list[Lease]:
        keys = sorted(pool)
        return [pool[k] for k in dict.fromkeys(keys[i % len(keys)] for i in picks)] if keys else []

    def _held(self) -> dict[str, Lease]:
        """The owned leases, leasing a few first when there are none (so the settling rules rarely idle).

        Rules never have state-dependent preconditions: which URLs a lease returns depends on the hosts' ready
        times (milliseconds), so a precondition on it would make Hypothesis' replays diverge.
        """
        if not self.held:
            self.lease(3)
        return self.held

    # -- rules ------------------------------------------------------------------------------------------------------
    @initialize(ids=st.lists(url_ids, min_size=10, max_size=30))
    def seed(self, ids: list[tuple[int, int]]) -> None:
        self.add(ids, 0, False)

    @rule(ids=st.lists(url_ids, min_size=1, max_size=8), depth=st.integers(0, 3), front=st.booleans())
    def add(self, ids: list[tuple[int, int]], depth: int, front: bool) -> None:
        urls = [url_of(i) for i in ids]
        new = set(urls) - self.added
        assert self.run(self.f.add([normalize(u) for u in urls], depth, front)) == len(new)
        self.added |= new
        for u in new:
            self.attempts[u] = 0

    def _lease(self, n: int, ttl_s: float) -> list[Lease]:
        async def go() -> tuple[int, list[Lease]]:
            r, k = self.client, self.f.keys
            now = now_ms()
            avail: Counter[str] = Counter()
            async for key in r.scan_iter(match=k.prefix + "q:*", count=1000):
                avail[key.decode()[len(k.prefix) + 2 :]] += int(await r.llen(key))
            for e in await r.zrangebyscore(k.deferred, "-inf", now):
                avail[host(url_of_entry(e))] += 1
            inflight = {h.decode(): int(v) for h, v in (await r.hgetall(k.host_inflight)).items()}
            can = sum(min(q, max(0, PHC - inflight.get(h, 0))) for h, q in avail.items())
            self.calls += 1
            leases, _ = await self.f.lease(n, f"m{self.calls}", ttl_s)
            return min(n, can), leases

        expected, leases = self.run(go())
        assert len(leases) == expected, (expected, leases)  # as many as politeness allows, no more
        for ls in leases:
            assert ls.url in self.added and ls.url not in self.done
            assert ls.url not in self.held and ls.url not in self.expiring
            assert ls.attempts == self.attempts[ls.url], (ls, self.attempts[ls.url])
        return leases

    @rule(n=st.integers(1, 8))
    def lease(self, n: int) -> None:
        for ls in self._lease(n, LONG_TTL_S):
            self.held[ls.url] = ls

    @rule(n=st.integers(1, 3))
    def lease_expiring(self, n: int) -> None:
        for ls in self._lease(n, TINY_TTL_S):
            self.expiring[ls.url] = ls

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4), links=st.lists(url_ids, max_size=5))
    def ack(self, picks: list[int], links: list[tuple[int, int]]) -> None:
        chosen = self._pick(self._held(), picks)  # empty when nothing is leasable: then only links are added
        link_urls = [url_of(i) for i in links]
        new = set(link_urls) - self.added
        new_links = [NewLink.of(normalize(u), 1) for u in link_urls]
        assert self.run(self.f.ack(chosen, new_links)) == (len(chosen), len(new))
        for ls in chosen:
            del self.held[ls.url]
            self.done.add(ls.url)
        self.added |= new
        for u in new:
            self.attempts[u] = 0

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4))
    def release(self, picks: list[int]) -> None:
        chosen = self._pick(self._held(), picks)
        assert self.run(self.f.release(chosen)) == len(chosen)
        for ls in chosen:
            del self.held[ls.url]

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4), past=st.booleans())
    def defer(self, picks: list[int], past: bool) -> None:
        chosen = self._pick(self._held(), picks)
        due_s = time.time() + (-5 if past else 3600)
        assert self.run(self.f.defer([Deferral(ls, due_s, ls.attempts + 1) for ls in chosen])) == len(chosen)
        for ls in chosen:
            del self.held[ls.url]
            self.attempts[ls.url] = ls.attempts + 1

    @rule(picks=st.lists(st.integers(0, 50), min_size=1, max_size=4))
    def dead(self, picks: list[int]) -> None:
        chosen = self._pick(self._held(), picks)
        err = {"kind": "http", "status": 404, "message": "gone for good"}
        assert self.run(self.f.dead([DeadLetter(ls, ls.attempts + 1, err) for ls in chosen])) == len(chosen)
        for ls in chosen:
            del self.held[ls.url]
        entries = {e.url: e for e in self.run(self.f.dead_entries())}
        for ls in chosen:
            assert (entries[ls.url].attempts, entries[ls.url].error) == (ls.attempts + 1, err)

    @rule()
    def reclaim(self) -> None:
        if not self.expiring:
            self.lease_expiring(2)
        if not self.expiring:
            assert self.run(self.f.reclaim(MAX_ATTEMPTS)) == (0, 0)  # nothing has expired
            return

        async def go() -> tuple[int, int]:
            scores = [await self.client.zscore(self.f.keys.leases, ls.member) for ls in self.expiring.values()]
            last = max(int(s) for s in scores if s is not None)
            give_up = time.monotonic() + 5
            while now_ms() <= last:  # poll the clock until every tiny lease has expired
                assert time.monotonic() < give_up
                await asyncio.sleep(0.001)
            return await self.f.reclaim(MAX_ATTEMPTS)

        requeued, dead = self.run(go())
        will_die = [ls for ls in self.expiring.values() if ls.attempts + 1 >= MAX_ATTEMPTS]
        assert (requeued, dead) == (len(self.expiring) - len(will_die), len(will_die))
        entries = {e.url: e for e in self.run(self.f.dead_entries())}
        for ls in will_die:
            assert entries[ls.url].error["kind"] == "lease_expired"
            assert entries[ls.url].attempts == ls.attempts + 1  # >= MAX_ATTEMPTS (defer counts too)
        for ls in self.expiring.values():
            self.attempts[ls.url] = ls.attempts + 1
            self.lost.append(ls)
        self.expiring.clear()

    @rule()
    def renew(self) -> None:
        lost = self.run(self.f.renew([*self.lost, *self.held.values()], LONG_TTL_S))
        assert sorted(ls.member for ls in lost) == sorted(ls.member for ls in self.lost)
        for ls in self.lost:  # a lost lease is never resurrected
            assert self.run(self.client.zscore(self.f.keys.leases, ls.member)) is None

    @rule()
    def late_ack_of_lost_leases(self) -> None:
        if not self.lost:
            return
        assert self.run(self.f.ack(self.lost)) == (0, 0)
        assert self.run(self.f.release(self.lost)) == 0
        assert self.run(self.f.defer([Deferral(ls, time.time(), 1) for ls in self.lost])) == 0
        assert self.run(self.f.dead([DeadLetter(ls, 1, {"kind": "x"}) for ls in self.lost])) == 0

    @rule()
    def requeue_dead(self) -> None:
        dead = [u.decode() for u in self.run(self.client.hkeys(self.f.keys.dead))]
        assert self.run(self.f.requeue_dead()) == len(dead)
        for u in dead:
            self.attempts[u] = 0

    # -- checked after every step --------------------------------------------------------------------------------
    @invariant()
    def every_url_in_exactly_one_state(self) -> None:
        states = self.run(self._states())
        seen: Counter[str] = Counter()
        for urls in states.values():
            seen.update(urls)
        assert {u: n for u, n in seen.items() if n > 1} == {}, states
        assert set(seen) == self.added, (set(seen) ^ self.added, states)
        owned = {ls.member for ls in [*self.held.values(), *self.expiring.values()]}
        members = {m.decode() for m in self.run(self.client.zrange(self.f.keys.leases, 0, -1))}
        assert members == owned

        c = self.run(self.f.counters())
        assert c.consistent, c
        sizes = {k: len(v) for k, v in states.items()}
        assert (c.enqueued, c.queued, c.deferred, c.inflight, c.dead, c.done) == (
            len(self.added),
            sizes["queued"],
            sizes["deferred"],
            sizes["leased"],
            sizes["dead"],
            sizes["done"],
        ), (c, sizes)

        inflight = {h.decode(): int(v) for h, v in self.run(self.client.hgetall(self.f.keys.host_inflight)).items()}
        assert inflight == dict(Counter(host(u) for u in states["leased"]))
        assert all(v <= PHC for v in inflight.values()), inflight


def test_frontier_state_machine(redis_server: Any) -> None:
    FrontierMachine.redis_url = redis_server.url
    run_state_machine_as_test(
        FrontierMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=40,
            deadline=None,
            database=None,  # write nothing into the checkout
            # no shrinking: against a real Redis it can run for minutes; a failure prints its full step list
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
