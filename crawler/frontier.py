"""The crawl frontier in Redis: add, lease, ack, release, defer, dead-letter, reclaim, renew.

Each operation is one Lua script call per batch (scripts in `crawler/lua/`, one file per operation, registered
once), so Redis round trips per page stay far below one. A lease is owned by one consumer (its token is part of
the lease member) until it is acked, released, deferred, dead-lettered, or expires and is reclaimed.

Counters always add up: enqueued = done + dead + queued + deferred + inflight + scheduled.

Recurring URLs (`--every`, crawler/schedule.py) count once in `enqueued`, like any URL: between passes they are
`scheduled` (waiting in the `recur` zset), during a pass queued, deferred or in flight as usual. A pass that ends
is counted in `passes` (acked) or `failed_passes` (dead-lettered, the failure kept for `crawl dead`), never in
`done` or `dead`: a recurring URL becomes done only when its schedule is cancelled. `recurring` counts the URLs
with a live schedule.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from crawler.connection import redis_errors
from crawler.entries import Extras, entry
from crawler.entries import Lease as Lease  # the frontier's API: re-exported
from crawler.entries import NewLink as NewLink
from crawler.frontier_state import Counters as Counters
from crawler.frontier_state import DeadEntry as DeadEntry
from crawler.frontier_state import DeadLetter as DeadLetter
from crawler.frontier_state import Deferral as Deferral
from crawler.frontier_state import Politeness as Politeness
from crawler.frontier_state import Scheduled as Scheduled
from crawler.frontier_state import Settlement as Settlement
from crawler.frontier_state import _text
from crawler.frontier_state import now_ms as now_ms
from crawler.keys import CrawlKeys
from crawler.schedule import JITTER, Validators, next_due_ms, recur_tail
from crawler.urls import CrawlURL

LINKS_PER_CALL = 10_000  # links per script call: ~10 ms of Redis time each
DUE_BUCKETS_COUNTED = 100  # `Counters.due` counts the entries of at most this many due seconds (a lower bound)
_SCRIPTS = (
    *("add", "lease", "ack", "release", "defer", "dead", "reclaim", "renew", "requeue_dead"),
    *("cancel", "cancel_all"),
)


def _load_lua(name: str) -> str:
    lua = resources.files("crawler") / "lua"
    return (lua / "_common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _blobs(items: Iterable[tuple[bytes, str]]) -> tuple[bytes, str]:
    """(fingerprints end to end, entries joined by newlines): the add script's two arguments for a batch."""
    pairs = list(items)
    return b"".join(fp for fp, _ in pairs), "\n".join(e for _, e in pairs)


def _link_blobs(links: Sequence[NewLink]) -> tuple[bytes, str]:
    return _blobs((ln.fingerprint, entry(ln.url, ln.depth, 0, ln.extras_json)) for ln in links)


_Call = tuple[str, list[str], list[Any]]  # a script call: name, keys, args without the crawl prefix


class Frontier:
    """Client of one crawl's frontier. Safe to share between tasks of one process; stateless across calls."""

    def __init__(self, redis: aioredis.Redis, crawl_name: str, politeness: Politeness | None = None) -> None:
        self.redis = redis
        self.keys = CrawlKeys(crawl_name)
        self.politeness = politeness or Politeness()
        # Script objects: EVALSHA, loading the script on NOSCRIPT (a restarted Redis forgets them).
        self._scripts: dict[str, AsyncScript] = {n: redis.register_script(_load_lua(n)) for n in _SCRIPTS}

    def __repr__(self) -> str:
        return f"Frontier(crawl={self.keys.name!r}, politeness={self.politeness})"

    @property
    def _phc(self) -> int:
        return self.politeness.per_host_concurrency

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any], client: Any = None) -> Any:
        with redis_errors(name):  # the frontier's edge: callers see RedisUnavailable only
            return await self._scripts[name](keys=list(keys), args=[self.keys.prefix, *args], client=client)

    # Each operation's script call is built once, here; the single-operation methods run it alone and `settle`
    # runs several on one pipeline. A call is (script name, keys, args without the prefix).
    def _add_call(self, fps: bytes, entries: str, front: bool = False) -> _Call:
        k = self.keys
        return "add", [k.seen, k.hosts, k.stats], [now_ms(), int(front), fps, entries]

    def _ack_call(
        self, done: Sequence[Lease], links: Sequence[NewLink], validators: Mapping[str, Validators] | None = None
    ) -> _Call:
        k = self.keys
        fps, entries = _link_blobs(links)
        now = now_ms()
        args: list[Any] = [now, self._phc, len(done)]
        for ls in done:
            state = ls.recur
            if state is None:
                args += [ls.member, 0, ""]
            else:
                nxt = ls.next_pass_entry((validators or {}).get(ls.member))
                args += [ls.member, next_due_ms(now, state.every_s), nxt]
        args += [fps, entries]
        return "ack", [k.leases, k.host_inflight, k.hosts, k.seen, k.stats, k.recur, k.dead], args

    def _release_call(self, leases: Sequence[Lease]) -> _Call:
        k = self.keys
        return (
            "release",
            [k.leases, k.host_inflight, k.hosts, k.stats],
            [now_ms(), self._phc, *(x.member for x in leases)],
        )

    def _defer_call(self, items: Sequence[Deferral]) -> _Call:
        k = self.keys
        args: list[Any] = [now_ms(), self._phc]
        for d in items:
            args += [d.lease.member, int(d.due_s * 1000), d.attempts]
        return "defer", [k.leases, k.host_inflight, k.hosts, k.deferred, k.stats], args

    def _dead_call(self, items: Sequence[DeadLetter]) -> _Call:
        k = self.keys
        args: list[Any] = [now_ms(), self._phc]
        now = args[0]
        for d in items:
            state = d.lease.recur
            due = next_due_ms(now, state.every_s) if state else 0
            args += [d.lease.member, d.attempts, json.dumps(d.error, separators=(",", ":")), due]
        return "dead", [k.leases, k.host_inflight, k.hosts, k.dead, k.stats, k.recur], args

    # -- adding ---------------------------------------------------------------------------------------------
    async def add(
        self,
        urls: Iterable[CrawlURL],
        depth: int = 0,
        front: bool = False,
        extras: Extras | None = None,
        every_s: int | None = None,
    ) -> int:
        """Add URLs not seen before in this crawl; returns how many were new. Duplicates are dropped silently.

        `extras` (the same for every URL of the call) travel with each URL; InvalidExtras when they cannot.
        With `every_s`, the URLs recur: each is due again that long (jittered) after each of its fetches."""
        tail = extras.encode() if extras else ""
        recur = recur_tail(every_s) if every_s else ""
        fps, entries = _blobs((n.fingerprint, entry(n.url, depth, 0, tail) + recur) for n in urls)
        if not fps:
            return 0
        return int(await self._run(*self._add_call(fps, entries, front)))

    async def add_prepared_in(
        self, pipe: Any, fps: bytes, entries: str, hosts: set[str], front: bool = False, seed: bool = False
    ) -> list[bool]:
        """Queue an add of a prepared batch (fingerprints end to end, entries joined by newlines) on a pipeline.

        Returns, per command queued, whether its result is an add count (True) or not (the seed-host SADD).
        With `seed`, the hosts are also recorded as trusted by the SSRF guard (the user asked for them).
        """
        if not fps:
            return []
        kinds = []
        if seed:
            from crawler.ssrf import bare_host

            pipe.sadd(self.keys.seed_hosts, *{bare_host(h) for h in hosts})
            kinds.append(False)
        await self._run(*self._add_call(fps, entries, front), client=pipe)
        return [*kinds, True]

    # -- leasing --------------------------------------------------------------------------------------------
    async def lease(self, n: int, token: str, ttl_s: float) -> tuple[list[Lease], int]:
        """Lease up to `n` URLs for consumer `token` for `ttl_s` seconds.

        Returns (leases, next_due_ms). An empty list means nothing is leasable right now: next_due_ms says when
        something may be (a host's delay ends, a retry or a recurring pass falls due), or -1 when nothing is
        queued, deferred or scheduled. Recurring passes that are due join their hosts' queues in the same call;
        a recurring lease carries its stored validators (`Lease.recur`).
        """
        if " " in token:
            raise ValueError("a consumer token cannot contain spaces")
        k = self.keys
        now = now_ms()
        members, next_due = await self._run(
            "lease",
            [k.hosts, k.host_inflight, k.host_next, k.leases, k.deferred, k.stats, k.recur, k.host_delay],
            [now, n, token, now + int(ttl_s * 1000), self._phc, self.politeness.per_host_delay_ms],
        )
        return [Lease.from_member(m.decode() if isinstance(m, bytes) else m) for m in members], int(next_due)

    async def renew(self, leases: Iterable[Lease], ttl_s: float) -> list[Lease]:
        """Extend the leases still owned; returns those that were lost (reclaimed by someone else)."""
        members = [ls.member for ls in leases]
        if not members:
            return []
        lost = await self._run("renew", [self.keys.leases], [now_ms() + int(ttl_s * 1000), *members])
        return [Lease.from_member(m.decode() if isinstance(m, bytes) else m) for m in lost]

    # -- settling -------------------------------------------------------------------------------------------
    async def ack(
        self,
        done: Sequence[Lease],
        links: Sequence[NewLink] = (),
        validators: Mapping[str, Validators] | None = None,
    ) -> tuple[int, int]:
        """Mark leases done and add the batch's new links. Returns (acked, links added).

        A recurring lease is not done: it waits for its next pass, one period (jittered) from now, with the
        `validators` given for its member (or, without an entry, the ones it had).

        Call only after the results are durably written: an acked URL is never fetched again. A lease that was
        lost (expired and reclaimed) is not counted twice; its URL may then appear twice in the output, which
        is the one duplicate at-least-once delivery allows.
        """
        if not done and not links:
            return 0, 0
        results = await self._pipeline(self._link_calls(done, links, validators))
        return int(results[0][0]), int(results[0][1]) + sum(int(r) for r in results[1:])

    def _link_calls(
        self, done: Sequence[Lease], links: Sequence[NewLink], validators: Mapping[str, Validators] | None = None
    ) -> list[_Call]:
        """The ack with the first chunk of links, then add calls: further chunks (one script must not hold Redis
        for long) and the links asked for at the front of their queues."""
        back = [ln for ln in links if not ln.front]
        front = [ln for ln in links if ln.front] if len(back) < len(links) else []
        calls = [self._ack_call(done, back[:LINKS_PER_CALL], validators)]
        for start in range(LINKS_PER_CALL, len(back), LINKS_PER_CALL):
            calls.append(self._add_call(*_link_blobs(back[start : start + LINKS_PER_CALL])))
        for start in range(0, len(front), LINKS_PER_CALL):
            calls.append(self._add_call(*_link_blobs(front[start : start + LINKS_PER_CALL]), front=True))
        return calls

    async def _pipeline(self, calls: Sequence[_Call]) -> list[Any]:
        if len(calls) == 1:
            return [await self._run(*calls[0])]
        with redis_errors("settle"):
            async with self.redis.pipeline(transaction=False) as pipe:
                for call in calls:
                    await self._run(*call, client=pipe)
                return list(await pipe.execute())

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give leases back to the front of their queues without counting an attempt."""
        return int(await self._run(*self._release_call(leases))) if leases else 0

    async def defer(self, items: Sequence[Deferral]) -> int:
        """Retry later (each due at its time, with the attempts made so far). Counted in `retried`."""
        return int(await self._run(*self._defer_call(items))) if items else 0

    async def dead(self, items: Sequence[DeadLetter]) -> int:
        """Dead-letter leases with their attempts and last error (a small JSON-able dict: kind, message, status).

        A recurring lease keeps its schedule: its failure is listed by `dead_entries` (error flagged
        `recurring: true`) and its next pass is due one period from now, with its stored validators."""
        return int(await self._run(*self._dead_call(items))) if items else 0

    async def settle(self, s: Settlement) -> int:
        """ack + defer + dead + release of one commit in a single round trip (a pipeline of script calls).

        Returns how many leases were acked (owned at the time). Raises RedisUnavailable when Redis is away; the
        settlement may then be applied again as a whole: every script ignores leases it no longer holds.
        """
        calls = self._link_calls(s.done, s.links, s.validators) if s.done or s.links else []
        if s.deferred:
            calls.append(self._defer_call(s.deferred))
        if s.dead:
            calls.append(self._dead_call(s.dead))
        if s.released:
            calls.append(self._release_call(s.released))
        if not calls:
            return 0
        results = await self._pipeline(calls)
        return int(results[0][0]) if s.done or s.links else 0

    async def reclaim(self, max_attempts: int, limit: int = 1000) -> tuple[int, int]:
        """Return expired leases to their queues (or the dead set on their last attempt). (requeued, dead).

        A recurring URL on its last attempt is dead-lettered for this pass and keeps its schedule."""
        k = self.keys
        requeued, dead = await self._run(
            "reclaim",
            [k.leases, k.host_inflight, k.hosts, k.dead, k.stats, k.recur],
            [now_ms(), self._phc, max_attempts, limit, random.uniform(-JITTER, JITTER)],
        )
        return int(requeued), int(dead)

    async def set_host_delay(self, host: str, delay_s: float) -> None:
        """A crawl-wide minimum delay between two leases of `host` (robots.txt Crawl-delay), for every worker."""
        with redis_errors("host delay"):
            await self.redis.hset(self.keys.host_delay, host, int(delay_s * 1000))

    async def is_seed_host(self, host: str) -> bool:
        with redis_errors("seed host check"):
            return bool(await self.redis.sismember(self.keys.seed_hosts, host))

    # -- reading --------------------------------------------------------------------------------------------
    async def counters(self) -> Counters:
        k = self.keys
        with redis_errors("counters"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(k.stats)
                pipe.zcard(k.deferred)
                pipe.zcard(k.leases)
                pipe.zrange(k.recur, 0, 0, withscores=True)
                pipe.zrangebyscore(k.recur, "-inf", now_ms(), start=0, num=DUE_BUCKETS_COUNTED)
                stats, deferred, inflight, first, due_seconds = await pipe.execute()
            due = 0
            if due_seconds:  # seconds come due between two lease calls: count their entries
                async with self.redis.pipeline(transaction=False) as pipe:
                    for second in due_seconds:
                        pipe.llen(k.recur_bucket(_text(second)))
                    due = sum(int(n) for n in await pipe.execute())
        s = {(a.decode() if isinstance(a, bytes) else a): int(b) for a, b in stats.items()}
        return Counters(
            enqueued=s.get("enqueued", 0),
            queued=s.get("queued", 0),
            deferred=int(deferred),
            inflight=int(inflight),
            done=s.get("done", 0),
            dead=s.get("dead", 0),
            retried=s.get("retried", 0),
            scheduled=s.get("scheduled", 0),
            recurring=s.get("recurring", 0),
            passes=s.get("passes", 0),
            failed_passes=s.get("failed_passes", 0),
            due=int(due),
            next_pass_ms=int(first[0][1]) if first else None,
        )

    async def pages_per_s(self, window_s: int = 60) -> float:
        """Crawl-wide pages/s over the last `window_s` complete seconds, from the per-second buckets."""
        now_s = int(time.time())
        with redis_errors("rates"):
            vals = await self.redis.mget([self.keys.rate(now_s - i) for i in range(1, window_s + 1)])
        oldest = max((i for i, v in enumerate(vals, start=1) if v), default=0)
        if not oldest:
            return 0.0
        # a crawl younger than the window is averaged over its own age, not over the whole window
        return sum(int(v) for v in vals if v) / oldest

    async def dead_entries(self, limit: int = 1000) -> list[DeadEntry]:
        out: list[DeadEntry] = []
        async for url, val in self.redis.hscan_iter(self.keys.dead, count=500):
            u = url.decode() if isinstance(url, bytes) else url
            v = val.decode() if isinstance(val, bytes) else val
            # "<depth> <attempts> <at_ms> <error JSON>", then "\n<extras JSON>" when the URL had extras
            head, _, tail = v.partition("\n")
            depth, attempts, at, err = head.split(" ", 3)
            out.append(DeadEntry(u, int(depth), int(attempts), int(at), json.loads(err), Extras.decode(tail)))
            if len(out) >= limit:
                break
        return out

    async def requeue_dead(self, limit: int = 1_000_000) -> int:
        k = self.keys
        return int(await self._run("requeue_dead", [k.dead, k.hosts, k.stats], [now_ms(), limit]))

    async def purge(self) -> int:
        """Delete every key of this crawl; returns how many were removed."""
        n = 0
        batch: list[Any] = []
        async for key in self.redis.scan_iter(match=self.keys.pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                n += int(await self.redis.unlink(*batch))
                batch = []
        if batch:
            n += int(await self.redis.unlink(*batch))
        return n
