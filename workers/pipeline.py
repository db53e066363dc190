"""The worker pipeline: lease -> local queue -> N fetch tasks -> parse pool -> sink -> ack.

    leaser ──▶ local queue (bounded by leases held) ──▶ fetch task × concurrency ──▶ outcomes
       ▲                                                                               │
       └────────── capacity freed ◀── committer: write + flush records, then one settle round trip

State is declared where it lives: `held` is every lease this process owns (renewed, released on stop),
`_outcomes` the settled-but-not-committed results. Nothing is acked before its record is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from crawler.errors import BlockedAddress, FetchError
from crawler.fetch import Fetcher, FetchResult
from crawler.frontier import Frontier, Lease, NewLink
from crawler.heartbeat import publish_heartbeat, remove_heartbeat
from crawler.metrics import WorkerMetrics, format_line, monitor_loop_lag
from crawler.parse import ParsedPage, ParseTask
from crawler.proxies import ProxyPool
from crawler.records import Record
from crawler.redact import scrub
from crawler.retry import Action, Decision, decide
from crawler.robots import RobotsCache
from crawler.settings import Settings
from crawler.sinks import JsonlSink
from crawler.ssrf import TrustCache, bare_host
from crawler.urls import InvalidURL, host_of, normalize
from workers.parse_pool import ParsePool

log = logging.getLogger("crawl.worker")

COMMIT_INTERVAL_S = 0.02  # group commit: a batch of results is flushed and acked at most this late
COMMIT_MAX = 512
PROXY_AUTH_FATAL = 5  # consecutive 407s that stop the worker: the credentials are wrong
ROBOTS_RETRY_S = 60.0
RECLAIM_BATCH = 1000  # expired leases reclaimed per script call
SEEN_CACHE = 200_000  # recent fingerprints kept locally so known links are not sent to Redis again


class _RetryNow(Exception):
    def __init__(self, decision: Decision) -> None:
        self.decision = decision


@dataclass(slots=True)
class Outcome:
    lease: Lease
    action: Action  # DONE, RETRY_LATER, DEAD or RELEASE
    attempts: int
    record: Record | None = None
    links: list[NewLink] = field(default_factory=list)
    due_s: float = 0.0
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One fetch attempt: what came back, what the policy decided, through which gateway (redacted)."""

    result: FetchResult | None
    page: ParsedPage | None
    decision: Decision
    proxy: str | None


class SeenCache:
    """Two generations of recent fingerprints: bounded memory, and a link seen on many pages goes to Redis once."""

    def __init__(self, size: int = SEEN_CACHE) -> None:
        self._half = max(1, size // 2)
        self._cur: set[bytes] = set()
        self._old: set[bytes] = set()

    def add(self, fp: bytes) -> bool:
        """True when `fp` was not seen recently (and remembers it)."""
        if fp in self._cur or fp in self._old:
            return False
        self._cur.add(fp)
        if len(self._cur) >= self._half:
            self._old, self._cur = self._cur, set()
        return True


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        frontier: Frontier,
        fetcher: Fetcher,
        parse_pool: ParsePool,
        proxies: ProxyPool,
        sink: JsonlSink,
        metrics: WorkerMetrics,
        out: Any = None,
        trust: TrustCache | None = None,
    ) -> None:
        self.s = settings
        self.frontier = frontier
        self.fetcher = fetcher
        self.parse_pool = parse_pool
        self.proxies = proxies
        self.sink = sink
        self.metrics = metrics
        self.out = out or sys.stderr
        # a fresh token per process: a restarted worker with the same id never owns its predecessor's leases
        self.token = (
            "".join(c if c.isalnum() or c in "-_." else "_" for c in settings.worker_id) + "." + secrets.token_hex(3)
        )
        # leases this process owns (member -> lease): renewed while held, released on stop
        self.held: dict[str, Lease] = {}
        # leases waiting for a fetch task; at most concurrency + one batch, because leasing is bounded by `held`
        self.queue: asyncio.Queue[Lease] = asyncio.Queue()
        # settled results waiting for the committer (records not yet flushed, leases not yet acked)
        self._outcomes: list[Outcome] = []
        # results whose records are flushed and whose settle has not succeeded yet (Redis away, or cancelled)
        self._written: list[Outcome] = []
        self._commit_wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._idle_fetchers = asyncio.Event()
        self.stopping = asyncio.Event()  # stop leasing; in-flight work finishes within the grace period
        self._closing = asyncio.Event()  # fetch tasks are gone: the committer finishes its commit and leaves
        self._closed = asyncio.Event()  # everything is settled: housekeeping loops leave
        self.stop_reason = ""
        self.exit_code = 0
        self.leased_total = 0
        self._busy = 0
        self._proxy_auth_failures = 0
        self._seen = SeenCache()
        self._rng = random.Random()
        self._secrets = settings.secrets()
        self.robots = RobotsCache(self._fetch_robots, settings.fetch.user_agent) if settings.politeness.robots else None
        self.trust = trust  # SSRF guard: None when --allow-private-networks

    def __repr__(self) -> str:
        return (
            f"Pipeline(token={self.token}, held={len(self.held)}, queue={self.queue.qsize()}, busy={self._busy}, "
            f"outcomes={len(self._outcomes)}, stopping={self.stopping.is_set()})"
        )

    # -- control --------------------------------------------------------------------------------------------
    def stop(self, reason: str, exit_code: int = 0) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.exit_code = exit_code
            self.stopping.set()
            self._capacity.set()

    def needs_backout(self) -> bool:
        """The one backpressure predicate: lease nothing while any of these is true."""
        return (
            self.stopping.is_set()
            or self.parse_pool.backlog > self.parse_pool.backlog_limit
            or len(self._outcomes) > 4 * COMMIT_MAX
            or (self.s.lifecycle.max_pages is not None and self.leased_total >= self.s.lifecycle.max_pages)
        )

    def emit(self, obj: dict[str, Any]) -> None:
        line = (
            format_line(obj, self.s.output.log_format)
            if obj.get("event") != "log"
            else (
                json.dumps(obj, separators=(",", ":"))
                if self.s.output.log_format == "json"
                else f"[{self.s.worker_id}] {obj['message']}"
            )
        )
        print(scrub(line, self._secrets), file=self.out, flush=True)

    def say(self, message: str, level: str = "info") -> None:
        self.emit({"event": "log", "level": level, "worker": self.s.worker_id, "message": message})

    async def run(self) -> int:
        """Run until stopped (signal, --until-idle, --max-pages, fatal gateway error); returns the exit code."""
        tasks: list[asyncio.Task[Any]] = []

        def died(t: asyncio.Task[Any]) -> None:
            """A loop that dies must stop the worker (exit 1), not leave it running and doing nothing."""
            if t.cancelled() or t.exception() is None:
                return
            exc = t.exception()
            self.say(f"internal error in the {t.get_name()} loop: {scrub(repr(exc), self._secrets)[:300]}", "error")
            self.stop(f"the {t.get_name()} loop failed", 1)

        def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
            t = asyncio.create_task(coro, name=name)
            t.add_done_callback(died)
            tasks.append(t)
            return t

        fetchers = [spawn(self._fetch_loop(), f"fetch-{i}") for i in range(self.s.concurrency)]
        committer = spawn(self._commit_loop(), "commit")
        helpers = [
            spawn(self._lease_loop(), "lease"),
            spawn(self._renew_loop(), "renew"),
            spawn(self._reclaim_loop(), "reclaim"),
            spawn(self._report_loop(), "report"),
            spawn(monitor_loop_lag(self.metrics), "lag"),
        ]
        try:
            await self.stopping.wait()
        finally:
            self.say(f"stopping: {self.stop_reason}; {self._busy} fetches in flight, {len(self.held)} leases held")
            # the leaser leaves by itself (stop() woke it): cancelling it mid-call would orphan a leased batch
            _, late = await asyncio.wait([helpers[0]], timeout=max(5.0, self.s.lifecycle.lease_ttl_s / 3))
            for t in late:
                t.cancel()
            await asyncio.gather(helpers[0], return_exceptions=True)
            # leases nobody started go straight back
            while not self.queue.empty():
                self.queue.get_nowait()
            deadline = time.monotonic() + self.s.lifecycle.grace_s
            while self._busy and time.monotonic() < deadline:
                self._idle_fetchers.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle_fetchers.wait(), max(0.0, deadline - time.monotonic()))
            for t in fetchers:
                t.cancel()
            await asyncio.gather(*fetchers, return_exceptions=True)
            # the committer finishes the commit it is in (never cut between writing records and acking them)
            self._closing.set()
            self._commit_wake.set()
            _, late = await asyncio.wait([committer], timeout=max(10.0, self.s.lifecycle.grace_s))
            for t in late:
                t.cancel()  # stuck retrying against an absent Redis: its written results are in `_written`
            await asyncio.gather(committer, return_exceptions=True)
            await self._final_commit()
            self._closed.set()  # renew and report loops exit on their own; cancel is only a backstop
            helpers[-1].cancel()  # the lag monitor only sleeps: nothing to finish
            _, late = await asyncio.wait(helpers[1:-1], timeout=2.0)
            for t in late:
                t.cancel()
            await asyncio.gather(*helpers[1:], return_exceptions=True)
            with contextlib.suppress(RedisError, OSError):
                await remove_heartbeat(self.frontier.redis, self.s.crawl_name, self.s.worker_id)
            self.emit(self.metrics.summary(self.proxies.success_rate()))
        return self.exit_code

    # -- leasing --------------------------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        limit = self.s.concurrency + self.s.lease_batch
        low_water = max(1, self.s.lease_batch // 4)
        backoff = 0.05
        while not self.stopping.is_set():
            free = limit - len(self.held)
            if self.s.lifecycle.max_pages is not None:
                free = min(free, self.s.lifecycle.max_pages - self.leased_total)
            if (free < low_water and free < limit - self._busy - self.queue.qsize()) or self.needs_backout():
                if (
                    self.s.lifecycle.max_pages is not None
                    and self.leased_total >= self.s.lifecycle.max_pages
                    and not self.held
                ):
                    self.stop(f"--max-pages {self.s.lifecycle.max_pages} reached")
                    return
                await self._wait_capacity(0.5)
                continue
            try:
                leases, next_due = await self.frontier.lease(
                    min(free, self.s.lease_batch), self.token, self.s.lifecycle.lease_ttl_s
                )
                backoff = 0.05
            except (RedisError, OSError) as exc:
                self.say(
                    f"Redis unavailable while leasing ({exc.__class__.__name__}); retrying in {backoff:.1f}s",
                    "warning",
                )
                await self._wait_capacity(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            if leases:
                self.leased_total += len(leases)
                for ls in leases:
                    self.held[ls.member] = ls
                    self.queue.put_nowait(ls)
                self.metrics.local_queue = self.queue.qsize()
                continue
            if self.s.lifecycle.until_idle and not self.held and not self._outcomes:
                try:
                    counters = await self.frontier.counters()
                except (RedisError, OSError):
                    await self._wait_capacity(backoff)
                    continue
                if counters.idle:
                    self.stop("frontier idle (--until-idle)")
                    return
            wait = 0.2 if next_due < 0 else min(0.5, max(0.005, next_due / 1000 - time.time()))
            await self._wait_capacity(wait)

    async def _wait_capacity(self, wait_s: float) -> None:
        self._capacity.clear()
        await self._pause(wait_s, self._capacity)

    # -- fetching -------------------------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        while True:
            lease = await self.queue.get()
            self.metrics.local_queue = self.queue.qsize()
            self._busy += 1
            self.metrics.inflight = self._busy
            try:
                outcome = await self._process(lease)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # this task is being stopped: the lease stays in `held`, released by the final commit
                # a cancellation that is not ours (a shared robots.txt fetch was cancelled): hand the URL back
                outcome = Outcome(lease, Action.RELEASE, lease.attempts)
            except (RedisError, OSError) as exc:
                # Redis away mid-fetch (robots, SSRF trust): not the URL's fault
                self.say(
                    f"Redis error while processing a URL ({exc.__class__.__name__}); handing it back",
                    "warning",
                )
                outcome = Outcome(lease, Action.RELEASE, lease.attempts)
            except Exception as exc:  # a bug must not lose the URL: dead-letter it with the error
                log.exception("unexpected error processing %s", lease.url)
                self.metrics.dead_letter("internal")
                outcome = Outcome(
                    lease,
                    Action.DEAD,
                    lease.attempts + 1,
                    error={"kind": "internal", "message": scrub(repr(exc), self._secrets)[:300]},
                )
            finally:
                self._busy -= 1
                self.metrics.inflight = self._busy
                if self._busy == 0:
                    self._idle_fetchers.set()
            self._outcomes.append(outcome)
            if len(self._outcomes) >= COMMIT_MAX or len(self._outcomes) == 1:
                self._commit_wake.set()

    def _unfetched(self, lease: Lease, error: str) -> Outcome:
        """Done without a fetch (robots, SSRF guard): a record saying why."""
        return Outcome(lease, Action.DONE, lease.attempts, record=self._record(lease, lease.attempts, error=error))

    async def _process(self, lease: Lease) -> Outcome:
        if self.trust is not None and await self.trust.refuses(bare_host(host_of(lease.url))):
            return self._unfetched(lease, "blocked_address")
        if self.robots is not None:
            try:
                allowed = await self.robots.allowed(lease.url)
            except BlockedAddress:
                return self._unfetched(lease, "blocked_address")
            if allowed is None:  # RFC 9309: unreachable robots.txt means "not now"; try the URL again later
                return self._retry_later(lease, lease.attempts + 1, "robots_unreachable", ROBOTS_RETRY_S)
            if not allowed:
                return self._unfetched(lease, "robots_disallowed")

        attempts = lease.attempts + 1
        last = await self._attempt(lease, attempts)
        if last.decision.action is Action.RETRY_NOW and attempts < self.s.max_attempts:
            # the rare path: tenacity drives the in-process retries, each with a fresh proxy session
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.s.max_attempts - attempts),
                wait=wait_random_exponential(multiplier=0.05, max=1.0),
                retry=retry_if_exception_type(_RetryNow),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        attempts += 1
                        last = await self._attempt(lease, attempts)
                        if last.decision.action is Action.RETRY_NOW:
                            raise _RetryNow(last.decision)
            except _RetryNow:
                pass  # attempts exhausted in process: `last` holds the final decision
        result, page, decision = last.result, last.page, last.decision
        if decision.action is Action.RETRY_NOW:  # ran out of in-process tries with attempts left: go through Redis
            decision = Decision(Action.RETRY_LATER, decision.reason, 1.0 + self._rng.random())
        if decision.action is Action.RELEASE:
            self._proxy_auth_failures += 1
            self.say(
                "the proxy gateway answered 407 Proxy Authentication Required: check the credentials "
                f"of {', '.join(st.redacted for st in self.proxies.states)}",
                "error",
            )
            if self._proxy_auth_failures >= PROXY_AUTH_FATAL:
                self.stop(f"{self._proxy_auth_failures} consecutive 407s from the gateway: bad proxy credentials", 3)
            return Outcome(lease, Action.RELEASE, attempts)
        self._proxy_auth_failures = 0
        if decision.action is Action.RETRY_LATER:
            return self._retry_later(lease, attempts, decision.reason or "retry", decision.delay_s)
        if decision.action is Action.DEAD:
            self.metrics.dead_letter(decision.reason or "unknown")
            err: dict[str, Any] = {"kind": decision.reason}
            if result is not None:
                err["status"] = result.status
            return Outcome(lease, Action.DEAD, attempts, error=err)
        record = self._record(
            lease, attempts, result, page, decision.reason or (page.error if page else None), last.proxy
        )
        links: list[NewLink] = []
        if (
            page is not None
            and page.follow
            and (self.s.scope.max_depth is None or lease.depth < self.s.scope.max_depth)
        ):
            for fp, host, url in page.follow:
                if self._seen.add(fp):
                    links.append(NewLink(fp, host, url, lease.depth + 1))
        return Outcome(lease, Action.DONE, attempts, record=record, links=links)

    def _retry_later(self, lease: Lease, attempts: int, reason: str, delay_s: float) -> Outcome:
        if attempts >= self.s.max_attempts:
            self.metrics.dead_letter(reason)
            return Outcome(lease, Action.DEAD, attempts, error={"kind": reason})
        self.metrics.attempt_error(reason)
        return Outcome(lease, Action.RETRY_LATER, attempts, due_s=time.time() + delay_s, error={"kind": reason})

    async def _attempt(self, lease: Lease, attempts: int) -> Attempt:
        choice = self.proxies.choose()
        result: FetchResult | None = None
        error: FetchError | None = None
        page: ParsedPage | None = None
        try:
            result = await self.fetcher.fetch(lease.url, choice)
        except FetchError as exc:
            error = exc
        if result is not None and result.body is not None and result.is_html and 200 <= result.status < 600:
            page = await self._parse(lease, result)
        decision = decide(
            status=result.status if result else None,
            error=error,
            attempts=attempts,
            max_attempts=self.s.max_attempts,
            retry_after=result.retry_after if result else None,
            now_epoch_s=time.time(),
            via_proxy=choice is not None,
            banned_body=page is not None and page.banned,
            rng=self._rng,
        )
        if choice is not None:
            ok = decision.action is Action.DONE and error is None and (result is None or result.status < 500)
            self.proxies.report(choice, ok, decision.ban)
        if decision.action is Action.RETRY_NOW:
            self.metrics.attempt_error(decision.reason or "retry")
        if self.metrics.prom is not None and decision.action is not Action.DONE:
            self.metrics.prom.outcome(decision.action.value)
        return Attempt(result, page, decision, choice.redacted if choice is not None else None)

    async def _parse(self, lease: Lease, result: FetchResult) -> ParsedPage:
        assert result.body is not None
        try:
            final = normalize(result.final_url).url
        except InvalidURL:
            final = lease.url
        task = ParseTask(
            body=result.body,
            url=lease.url,
            final_url=final,
            content_encoding=result.content_encoding,
            header_charset=result.charset,
            max_bytes=self.s.fetch.max_body_bytes,
            max_links=self.s.scope.max_links_per_page,
            keep_tracking=self.s.scope.keep_tracking_params,
            follow=self.s.follow_links,
            allow_domains=self.s.scope.allow_domains,
            rules=self.s.parse.extract_rules,
            ban_markers=self.s.proxy.ban_markers,
        )
        t0 = time.monotonic()
        page = await self.parse_pool.parse(task)
        self.metrics.window.parse_wait_ms += (time.monotonic() - t0) * 1000
        self.metrics.parse_backlog_bytes = self.parse_pool.backlog
        return page

    def _record(
        self,
        lease: Lease,
        attempts: int,
        result: FetchResult | None = None,
        page: ParsedPage | None = None,
        error: str | None = None,
        proxy: str | None = None,
    ) -> Record:
        nbytes = (page.size if page is not None else result.bytes) if result is not None else None
        rec = Record(
            url=lease.url,
            final_url=result.final_url if result else None,
            status=result.status if result else None,
            depth=lease.depth,
            fetched_at=round(time.time(), 3),
            elapsed_ms=result.elapsed_ms if result else None,
            bytes=nbytes,
            content_type=(result.content_type or None) if result else None,
            title=page.title if page else None,
            links=page.links if page else [],
            error=error,
            attempts=attempts,
            proxy=proxy,  # already redacted
            worker=self.s.worker_id,
            links_total=page.links_total if page else 0,
            truncated_links=bool(page and page.links_total > len(page.links)),
            canonical=page.canonical if page else None,
            noindex=page.noindex if page else False,
            nofollow=page.nofollow if page else False,
            text_length=page.text_length if page else None,
            charset=page.charset if page else None,
            redirects=result.redirects if result else 0,
            data=page.data if page else None,
        )
        if result is not None:
            self.metrics.window.fetch_ms += result.elapsed_ms
        self.metrics.page(rec.status, rec.bytes or 0, result.elapsed_ms if result else 0.0, error)
        return rec

    async def _fetch_robots(self, url: str) -> tuple[int, bytes]:
        return await self.fetcher.fetch_small(url, self.proxies.choose())

    # -- committing -----------------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        while not self._closing.is_set():
            await self._commit_wake.wait()
            self._commit_wake.clear()
            if len(self._outcomes) < COMMIT_MAX and not self._closing.is_set():
                await asyncio.sleep(COMMIT_INTERVAL_S)  # group commit: let a batch gather
            await self._commit()

    async def _pause(self, seconds: float, until: asyncio.Event) -> bool:
        """Sleep `seconds` or until `until` is set; True when it is (time to leave the loop)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)
        return until.is_set()

    async def _commit(self, extra_release: list[Lease] | None = None, give_up_at: float | None = None) -> None:
        """Write and flush the records of the finished outcomes, then settle them in Redis.

        Two phases with state between them: outcomes whose records are written move to `_written` until their
        settle succeeds, so a retry (or the final commit after a cancelled one) settles them without writing
        their records twice and without releasing their leases. `give_up_at` bounds the retries at shutdown.
        """
        batch, self._outcomes = self._outcomes, []
        records = [o.record for o in batch if o.record is not None and o.action is Action.DONE]
        if records:
            await asyncio.to_thread(self.sink.write, records)  # flushed before any ack below
        self._written += batch
        todo = list(self._written)
        if not todo and not extra_release:
            return
        done = [o.lease for o in todo if o.action is Action.DONE]
        links = [ln for o in todo if o.action is Action.DONE for ln in o.links]
        deferred = [(o.lease, o.due_s, o.attempts) for o in todo if o.action is Action.RETRY_LATER]
        dead = [(o.lease, o.attempts, o.error or {"kind": "unknown"}) for o in todo if o.action is Action.DEAD]
        released = [o.lease for o in todo if o.action is Action.RELEASE] + (extra_release or [])
        backoff = 0.05
        while True:
            try:
                await self.frontier.settle(done, links, deferred, dead, released)
                break
            except (RedisError, OSError) as exc:
                # the records are written; keep trying to settle (never write them twice, never drop them)
                if give_up_at is not None and time.monotonic() + backoff > give_up_at:
                    raise
                self.say(
                    f"Redis unavailable while acking ({exc.__class__.__name__}); retrying in {backoff:.1f}s",
                    "warning",
                )
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
        settled = {id(o) for o in todo}
        self._written = [o for o in self._written if id(o) not in settled]
        self.metrics.released += len(released)
        for ls in [o.lease for o in todo] + (extra_release or []):
            if self.held.get(ls.member) is ls:  # identity: the same member may have been leased again since
                del self.held[ls.member]
        self._capacity.set()

    async def _final_commit(self) -> None:
        """Commit what finished; give back every lease still held, without counting an attempt."""
        finished = {o.lease.member for o in self._outcomes + self._written}
        unfinished = [ls for m, ls in self.held.items() if m not in finished]
        give_up_at = time.monotonic() + max(10.0, self.s.lifecycle.grace_s)
        try:
            await self._commit(unfinished, give_up_at)
        except (RedisError, OSError) as exc:
            self.say(
                f"could not settle {len(self._written)} results nor hand back {len(unfinished)} leases "
                f"({exc.__class__.__name__}): the results are written; the leases expire in "
                f"{self.s.lifecycle.lease_ttl_s:.0f}s",
                "warning",
            )
        await asyncio.to_thread(self.sink.close)

    # -- housekeeping ---------------------------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        interval = self.s.lifecycle.lease_ttl_s / 3
        while not await self._pause(interval, self._closed):  # renew through the grace period too
            try:
                lost = await self.frontier.renew(list(self.held.values()), self.s.lifecycle.lease_ttl_s)
            except (RedisError, OSError):
                continue
            lost = [ls for ls in lost if ls.member in self.held]  # acked while the renew was in flight: not lost
            if lost:
                self.say(
                    f"{len(lost)} leases were reclaimed by others while held (this worker stalled?)",
                    "warning",
                )

    async def _reclaim_loop(self) -> None:
        while not await self._pause(self.s.lifecycle.lease_ttl_s / 2 * (0.75 + self._rng.random() / 2), self.stopping):
            requeued = dead = 0
            try:
                while True:  # batch after batch while they come back full: a big fleet died
                    r, d = await self.frontier.reclaim(self.s.max_attempts, RECLAIM_BATCH)
                    requeued, dead = requeued + r, dead + d
                    if r + d < RECLAIM_BATCH or self.stopping.is_set():
                        break
            except (RedisError, OSError):
                continue
            if requeued or dead:
                self.say(f"reclaimed {requeued} expired leases ({dead} dead-lettered after their last attempt)")

    async def _report_loop(self) -> None:
        interval = min(self.s.output.log_interval_s, self.s.lifecycle.heartbeat_ttl_s / 3)
        next_line = time.monotonic() + self.s.output.log_interval_s
        while not await self._pause(interval, self._closed):
            snap = None
            if time.monotonic() >= next_line:
                next_line += self.s.output.log_interval_s
                snap = self.metrics.snapshot(self.proxies.success_rate())
                self.emit(snap)
            await self._heartbeat(snap)

    async def _heartbeat(self, snap: dict[str, Any] | None) -> None:
        if snap is None:
            snap = self.metrics.snapshot(self.proxies.success_rate(), reset=False)
        info = {
            "id": self.s.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": round(time.time() - (time.monotonic() - self.metrics.started), 1),
            "last_seen": round(time.time(), 1),
            "pages": self.metrics.pages,
            "pages_per_s": snap["pages_per_s"],
            "inflight": self._busy,
            "parse_backlog": self.parse_pool.backlog,
            "rss_mb": snap["rss_mb"],
            "proxy_success_rate": snap["proxy_success_rate"],
            "errors": dict(self.metrics.errors),
            "proxies": [
                {
                    "proxy": st.redacted,
                    "health": st.health,
                    "requests": st.requests,
                    "failures": st.failures,
                    "rotations": st.rotations,
                }
                for st in self.proxies.states
            ],
        }
        with contextlib.suppress(RedisError, OSError):
            await publish_heartbeat(self.frontier.redis, self.s.crawl_name, info, self.s.lifecycle.heartbeat_ttl_s)
