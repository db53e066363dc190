"""Stage 2, processing one lease: SSRF guard, robots.txt, fetch attempts as `crawler.retry` decides, parse.

`FetchTasks` runs `concurrency` tasks, each taking a lease from the leaser's queue and handing one `Outcome` to
the committer. `Processor.process` is the whole life of one lease in this worker; it never decides a retry
itself (the policy is `crawler.retry`), and it never lets an error escape without an outcome: a Redis outage
mid-lease hands the URL back without an attempt, a bug dead-letters it with the error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from crawler import retry
from crawler.errors import (
    BlockedAddress,
    FetchError,
    GatewayUnreachable,
    ProxyAuthError,
    RedisUnavailable,
)
from crawler.fetch_base import FetcherLike, FetchResult, answered
from crawler.frontier import Lease, NewLink
from crawler.metrics import WorkerMetrics
from crawler.parse import ParsedPage
from crawler.parse_tasks import task_for, task_options
from crawler.proxies import ProxyChoice, ProxyPool
from crawler.records import Record
from crawler.redact import scrub
from crawler.retry import Action, Decision
from crawler.robots_cache import RobotsCache
from crawler.schedule import Validators
from crawler.settings import Settings
from crawler.ssrf import TrustCache, bare_host
from crawler.urls import host_of
from crawler.warc import WarcExchange, WarcItem
from workers import archive
from workers.outcomes import Outcome, build_record, describe
from workers.parse_pool import ParsePool
from workers.robots_sitemaps import RobotsSitemaps, first_time
from workers.seen_cache import SeenCache

log = logging.getLogger("crawl.worker")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One fetch attempt: what came back, what the policy decided, through which gateway (redacted)."""

    result: FetchResult | None
    page: ParsedPage | None
    decision: Decision
    proxy: str | None
    error: FetchError | None = None  # the failure behind a decision, when the fetch raised
    warc: list[WarcItem] = field(default_factory=list)  # with --warc: what the WARC sink keeps of it


class Processor:
    """Turns one lease into one outcome. Owns the retry RNG, the 407 streak and the seen-link cache."""

    def __init__(
        self,
        settings: Settings,
        fetcher: FetcherLike,
        parse_pool: ParsePool,
        proxies: ProxyPool,
        metrics: WorkerMetrics,
        trust: TrustCache | None,
        on_fatal: Callable[[str, int], None],
        say: Callable[[str, str], None],
        set_host_delay: Callable[[str, float], Awaitable[None]],
    ) -> None:
        self.s = settings
        self.fetcher = fetcher
        self.parse_pool = parse_pool
        self.proxies = proxies
        self.metrics = metrics
        self.trust = trust  # SSRF guard: None with --allow-private-networks
        agent = settings.politeness.robots_agent
        # --sitemaps-from-robots reads robots.txt for its Sitemap: lines even with --no-robots (then nothing of it
        # is enforced)
        wanted = settings.politeness.robots or settings.scope.sitemaps_from_robots
        self.robots = RobotsCache(self._fetch_robots, agent) if wanted else None
        self.seen = SeenCache()  # links recently sent to Redis; cleared when Redis may have lost them
        self._on_fatal = on_fatal
        self._set_host_delay = set_host_delay  # Frontier.set_host_delay: a robots.txt Crawl-delay, crawl-wide
        self._delays_told: set[str] = set()  # hosts whose Crawl-delay the frontier was told (bounded)
        self._sitemaps = (
            RobotsSitemaps(self.robots, settings.scope.allow_domains)
            if self.robots is not None and settings.scope.sitemaps_from_robots
            else None
        )
        self._say = say
        self._rng = random.Random()
        self._auth_streak = retry.ProxyAuthStreak()
        self._secrets = settings.secrets()
        self._task_options = task_options(settings)  # what every ParseTask carries from the settings
        self._warc = settings.output.warc_dir is not None
        self._warc_all = settings.output.warc_content == "all"

    def __repr__(self) -> str:
        return f"Processor(robots={self.robots!r}, seen={self.seen!r}, auth_streak={self._auth_streak.count})"

    async def process(self, lease: Lease) -> Outcome:
        """The outcome of one lease; raises only CancelledError (the caller decides what that means)."""
        try:
            return await self._process(lease)
        except RedisUnavailable as exc:  # Redis away mid-lease (robots, SSRF trust): not the URL's fault
            self.seen.clear()
            self._say(f"Redis unavailable while processing a URL ({exc.cause_name}); handing it back", "warning")
            return Outcome(lease, Action.RELEASE, lease.attempts)
        except Exception as exc:  # a bug must not lose the URL: dead-letter it with the error
            log.exception("unexpected error processing %s", lease.url)
            self.metrics.dead_letter("internal")
            err = {"kind": "internal", "message": scrub(repr(exc), self._secrets)[:300]}
            return Outcome(lease, Action.DEAD, lease.attempts + 1, error=err)

    async def _process(self, lease: Lease) -> Outcome:
        outcome = await self._outcome(lease)
        if self._sitemaps is not None:  # a seed's, even when robots.txt disallows it
            outcome.links += await self._sitemaps.links(lease, outcome)
        return outcome

    async def _outcome(self, lease: Lease) -> Outcome:
        if self.trust is not None and await self.trust.refuses(bare_host(host_of(lease.url))):
            return self._unfetched(lease, "blocked_address")
        if self.robots is not None and self.s.politeness.robots:
            gate = await self._robots_gate(lease)
            if gate is not None:
                return gate
        attempts, last = await self._attempts(lease)
        return await self._finish(lease, attempts, last)

    async def _robots_gate(self, lease: Lease) -> Outcome | None:
        """None when robots.txt lets the URL through; else the lease's outcome (disallowed, unreachable, 407)."""
        assert self.robots is not None
        try:
            verdict = await self.robots.check(lease.url)
        except BlockedAddress:
            return self._unfetched(lease, "blocked_address")
        except ProxyAuthError:  # the gateway refused robots.txt: the credentials, not the site
            return await self._finish(lease, lease.attempts, Attempt(None, None, retry.PROXY_AUTH, None))
        except GatewayUnreachable:  # the gateway is down: hand the URL back, no attempt spent
            return await self._finish(lease, lease.attempts, Attempt(None, None, retry.GATEWAY_DOWN, None))
        if verdict.allowed is None:
            attempts = lease.attempts + 1
            decision = retry.robots_unreachable(verdict.rules.cause, attempts, self.s.max_attempts, self._rng)
            return await self._finish(lease, attempts, Attempt(None, None, decision, None), verdict.rules.cause)
        if not verdict.allowed:
            return self._unfetched(lease, "robots_disallowed")
        if verdict.rules.crawl_delay_s:
            await self._honour_crawl_delay(host_of(lease.url), verdict.rules.crawl_delay_s)
        return None

    async def _honour_crawl_delay(self, host: str, delay_s: float) -> None:
        """Tell the frontier a host's Crawl-delay (capped by --max-crawl-delay) once: every worker then waits it."""
        if not first_time(self._delays_told, host):
            return
        try:
            await self._set_host_delay(host, min(delay_s, self.s.politeness.max_crawl_delay_s))
        except BaseException:
            self._delays_told.discard(host)  # not told: the next lease of the host tries again
            raise

    async def _attempts(self, lease: Lease) -> tuple[int, Attempt]:
        """The first attempt, then (the rare path) tenacity's in-process retries, each with a fresh session.

        With --warc every attempt is archived: the returned attempt's `warc` holds the earlier attempts' records
        (a 503 that was retried) before its own."""
        attempts = lease.attempts + 1
        last = await self._attempt(lease, attempts)
        if last.decision.action is not Action.RETRY_NOW or attempts >= self.s.max_attempts:
            return attempts, last
        earlier: list[WarcItem] = []
        try:
            async for attempt in retry.in_process_retrying(self.s.max_attempts - attempts):
                with attempt:
                    earlier += last.warc
                    attempts += 1
                    last = await self._attempt(lease, attempts)
                    if last.decision.action is Action.RETRY_NOW:
                        raise retry.RetryNow
        except retry.RetryNow:
            pass  # in-process tries exhausted: `last` holds the final attempt
        return attempts, replace(last, warc=earlier + last.warc) if earlier else last

    async def _finish(self, lease: Lease, attempts: int, last: Attempt, cause: FetchError | None = None) -> Outcome:
        """Execute the policy's final decision: a record, a deferral, a dead letter, or a hand-back."""
        decision = retry.conclude(last.decision, attempts, self.s.max_attempts, self._rng)
        if self._auth_streak.observe(decision):
            self._on_fatal(f"{self._auth_streak.count} consecutive 407s from the gateway: bad proxy credentials", 3)
        if decision.action is Action.RELEASE:
            if decision is retry.PROXY_AUTH:
                self._say(
                    "the proxy gateway answered 407 Proxy Authentication Required: check the credentials "
                    f"of {', '.join(st.redacted for st in self.proxies.states)}",
                    "error",
                )
            self.metrics.release()
            return Outcome(lease, Action.RELEASE, lease.attempts)
        result = last.result
        if decision.action is Action.RETRY_LATER:
            self.metrics.attempt_error(decision.reason or "retry")
            err = self._error(decision, result, cause or last.error)
            due_s = time.time() + decision.delay_s
            return Outcome(lease, Action.RETRY_LATER, attempts, due_s=due_s, error=err, warc=last.warc)
        if decision.action is Action.DEAD:
            self.metrics.dead_letter(decision.reason or "unknown")  # counts the dead outcome once
            err = self._error(decision, result, cause or last.error)
            return Outcome(lease, Action.DEAD, attempts, error=err, warc=last.warc)
        page = last.page
        record = self._record(
            lease, attempts, result, page, decision.reason or (page.error if page else None), last.proxy
        )
        validators = _recur_pass(record, result, page, lease) if lease.recur_text and result is not None else None
        links = self._new_links(lease, page)
        items = page.items if page else b""
        return Outcome(
            lease, Action.DONE, attempts, record=record, links=links, items=items, warc=last.warc, validators=validators
        )

    def _error(self, decision: Decision, result: FetchResult | None, cause: FetchError | None) -> dict[str, Any]:
        """The dead letter's (or deferral's) error: the stable kind, the status, and what really happened."""
        err: dict[str, Any] = {"kind": decision.reason or "unknown"}
        if result is not None:
            err["status"] = result.status
        if cause is not None:
            err["message"] = scrub(describe(cause), self._secrets)[:300]
        return err

    def _new_links(self, lease: Lease, page: ParsedPage | None) -> list[NewLink]:
        """The page's links to follow (through the seen-link cache) and the parser's follow requests."""
        max_depth = self.s.scope.max_depth
        if page is None:
            return []
        if lease.is_sitemap:  # a sitemap's URLs are seeds, not links: at its depth, --no-follow expands them
            return [NewLink(r.fingerprint, r.host, r.url, lease.depth, r.extras_json) for r in page.requests]
        if max_depth is not None and lease.depth >= max_depth:
            return []
        depth = lease.depth + 1
        links = [NewLink(fp, host, url, depth) for fp, host, url in page.follow if self.seen.add(fp)]
        # a parser's request carries its extras: the same URL with other data is another request, so it skips the
        # seen-link cache (the frontier's dedup still applies)
        for r in page.requests:
            links.append(NewLink(r.fingerprint, r.host, r.url, depth, r.extras_json, _front(r.priority)))
        return links

    def _unfetched(self, lease: Lease, error: str) -> Outcome:
        """Done without a fetch (robots, SSRF guard): a record saying why."""
        return Outcome(lease, Action.DONE, lease.attempts, record=self._record(lease, lease.attempts, error=error))

    async def _attempt(self, lease: Lease, attempts: int) -> Attempt:
        try:
            choice = self.proxies.choose()
        except GatewayUnreachable as exc:  # every gateway is down: the URL goes back untouched
            return Attempt(None, None, retry.GATEWAY_DOWN, None, exc)
        result: FetchResult | None = None
        error: FetchError | None = None
        page: ParsedPage | None = None
        started = archive.now() if self._warc else None
        try:
            result = await self.fetcher.fetch(lease.url, choice, _request_headers(lease), lease.is_sitemap)
        except GatewayUnreachable as exc:
            assert choice is not None
            self._gateway_failed(choice, exc)
            return Attempt(None, None, retry.GATEWAY_DOWN, choice.redacted, exc)
        except FetchError as exc:
            error = exc.with_traceback(None)  # its frames would keep the fetch's buffers alive until a GC
        archived = answered(result, error)  # the result, or a body cut at the cap (--warc)
        kept = archive.of_attempt(archived, error, started, self._warc_all, choice is not None) if started else []
        if result is not None and self._parses(lease, result):
            page = await self._parse(lease, result, kept)
        decision = retry.decide(
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
            self.proxies.report(choice, ok, decision.ban, archived.bytes if archived is not None else 0)
        if decision.action is Action.RETRY_NOW:
            self.metrics.attempt_error(decision.reason or "retry", "retry_now")
        # the parse process encoded the records beside the parse; if it did not (not parsed, a timeout or a crash),
        # the writer encodes the exchanges in the committer's thread
        warc: list[WarcItem] = [page.warc] if page is not None and page.warc is not None else list(kept)
        return Attempt(result, page, decision, choice.redacted if choice is not None else None, error, warc)

    @staticmethod
    def _parses(lease: Lease, result: FetchResult) -> bool:
        """HTML answers go to the parse pool (any status: error pages have titles); a sitemap when it is 2xx."""
        if result.body is None or not 200 <= result.status < 600:
            return False
        return result.is_html or (lease.is_sitemap and result.status < 300)

    async def _parse(self, lease: Lease, result: FetchResult, warc: list[WarcExchange]) -> ParsedPage:
        """Parse in the pool; with `warc`, the parse process also encodes those records (the body crosses once:
        the final exchange's body is the task's own bytes object, which pickle sends once)."""
        kind = "sitemap" if lease.is_sitemap else None
        digest = bool(lease.recur_text)
        page_of = {
            "depth": lease.depth,
            "extras_json": lease.extras_json,
            "kind": kind,
            "want_digest": digest,
            "warc": tuple(warc),
        }
        task = task_for(result, lease.url, self._task_options, **page_of)
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
        rec = build_record(lease, attempts, self.s.worker_id, result, page, error, proxy)
        if result is not None:
            self.metrics.traffic.page(result.status, result.bytes, result.status == 304)
            self.metrics.window.fetch_ms += result.elapsed_ms
        self.metrics.page(rec.status, rec.bytes or 0, result.elapsed_ms if result else 0.0, error)
        return rec

    async def _fetch_robots(self, url: str) -> tuple[int, bytes]:
        choice = self.proxies.choose()  # GatewayUnreachable when every gateway is down
        try:
            return await self.fetcher.fetch_small(url, choice)
        except GatewayUnreachable as exc:
            if choice is not None:
                self._gateway_failed(choice, exc)
            raise

    def _gateway_failed(self, choice: ProxyChoice, exc: GatewayUnreachable) -> None:
        """Count a gateway failure on its breaker; one warning when the breaker opens."""
        if self.proxies.gateway_failed(choice, str(exc)):
            self._say(
                f"gateway {choice.redacted} is down ({scrub(str(exc), self._secrets)}); URLs that need it are handed "
                "back without spending an attempt, and leasing pauses while every gateway is down; probing it",
                "warning",
            )


def _recur_pass(record: Record, result: FetchResult, page: ParsedPage | None, lease: Lease) -> Validators | None:
    """A recurring URL's pass: say `not_modified` / `changed` on its record; what to keep for the next pass
    (None keeps the stored validators: a 304, or an answer that is not a 200)."""
    recur = lease.recur
    assert recur is not None
    if result.status == 304:
        record.not_modified, record.changed = True, False
        return None
    digest = page.digest if page is not None else None
    record.changed = recur.changed(digest)
    if result.status != 200:
        return None
    headers = {k.lower(): v for k, v in result.raw_headers}
    return Validators(headers.get("etag"), headers.get("last-modified"), digest)


def _request_headers(lease: Lease) -> dict[str, str] | None:
    """A follow request's own headers (decoded only when the lease has some: no JSON work for the rest), and a
    recurring URL's conditional request (If-None-Match / If-Modified-Since from its previous pass)."""
    headers = lease.headers if '"headers"' in lease.extras_json else None
    recur = lease.recur if lease.recur_text else None
    if recur is not None:
        headers = {**(headers or {}), **recur.conditional_headers()}
    return headers


def _front(priority: int | None) -> bool:
    """A follow request with a positive priority goes to the head of its host's queue."""
    return priority is not None and priority > 0


class FetchTasks:
    """`concurrency` tasks: lease from the queue -> `Processor.process` -> the committer. Tracks how many are busy."""

    def __init__(self, processor: Processor, queue: asyncio.Queue[Lease], deliver: Callable[[Outcome], None]) -> None:
        self.processor = processor
        self.queue = queue
        self._deliver = deliver
        self.busy = 0
        self.idle = asyncio.Event()  # set whenever no fetch is in flight
        self.idle.set()

    def __repr__(self) -> str:
        return f"FetchTasks(busy={self.busy}, queued={self.queue.qsize()})"

    async def run_one(self) -> None:
        """One fetch task: runs until cancelled. A lease it holds when cancelled stays in the lease book."""
        metrics = self.processor.metrics
        while True:
            lease = await self.queue.get()
            metrics.local_queue = self.queue.qsize()
            self.busy += 1
            self.idle.clear()
            metrics.inflight = self.busy
            try:
                outcome = await self.processor.process(lease)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # this task is being stopped: the lease stays in the book, handed back at stop
                # a cancellation that is not ours (a shared robots.txt fetch was cancelled): hand the URL back
                outcome = Outcome(lease, Action.RELEASE, lease.attempts)
            finally:
                self.busy -= 1
                metrics.inflight = self.busy
                if self.busy == 0:
                    self.idle.set()
            self._deliver(outcome)
