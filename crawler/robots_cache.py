"""robots.txt per origin, fetched once and shared: the cache in front of `crawler.robots` (the RFC 9309 parser).

One fetch per origin however many fetch tasks ask at once; parsing and any costly check run in a thread, never on
the event loop; bounded by entries and by bytes; the answer distinguishes allowed, disallowed and "unreachable,
and why" (the cause is kept for the record), and a gateway 407 or an SSRF refusal reaches the caller as is.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from crawler.errors import BlockedAddress, FetchError, GatewayUnreachable, ProxyAuthError, TooManyRedirects
from crawler.robots import RobotsRules, RobotsState, parse_robots, validate_agent_token

UNREACHABLE_RETRY_S = 60.0
CACHE_TTL_S = 24 * 3600.0  # RFC 9309 2.4: SHOULD NOT use a cached copy for more than 24 hours
THREAD_PARSE_BYTES = 32 * 1024  # larger bodies are parsed in a thread (a 500 KiB file is ~0.2 s of CPU)
CHECK_THREAD_COST = 4_000_000  # checks whose check_cost passes this (~1 ms) run in a thread, off the event loop
CACHE_MAX_BYTES = 64 * 1024 * 1024  # rough budget of the rules held by one RobotsCache


def split_url(url: str) -> tuple[str, str]:
    """(origin, path) of an absolute URL: `scheme://host[:port]` (user info dropped, lower-cased) and the path and
    query from '/' (fragment dropped), the part robots.txt rules are matched against."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # not absolute: read as Google's GetPathParamsQuery does (`//host/p`, `host/p`, `/p`)
        scheme, rest = "", url[2:] if url.startswith("//") else url
    end = len(rest)
    for ch in "/?#":
        found = rest.find(ch)
        if 0 <= found < end:
            end = found
    authority = rest[:end].rpartition("@")[2]
    tail = rest[end:].partition("#")[0]
    origin = f"{scheme.lower()}://{authority.lower()}" if sep else ""
    return origin, tail if tail.startswith("/") else "/" + tail


def _detached(exc: FetchError) -> FetchError:
    """The error without its tracebacks (cached for a minute, it must not pin the frames it was raised in)."""
    chained: BaseException | None = exc
    for _ in range(8):  # a chain is short; the bound guards against a cycle
        if chained is None:
            break
        chained.__traceback__ = None
        chained = chained.__cause__ or chained.__context__
    return exc


def _weight(rules: RobotsRules) -> int:
    """Approximate bytes held by a cache entry, for the cache's byte budget."""
    return 512 + sum(160 + 2 * len(r.pattern) for r in rules.rules) + sum(80 + len(s) for s in rules.sitemaps)


RobotsFetch = Callable[[str], Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True, slots=True)
class RobotsVerdict:
    """`allowed`: True/False by the rules, None while robots.txt is unreachable (ask again later); `rules`: why."""

    allowed: bool | None
    rules: RobotsRules


class RobotsCache:
    """Per-origin rules for one agent, fetched once (concurrent askers share one fetch), bounded LRU.

    `fetch(robots_url) -> (status, body)`: body up to at least MAX_ROBOTS_BYTES (longer is cut here). Status 0 means no
    answer. It may raise: ProxyAuthError (the gateway refused our credentials), GatewayUnreachable (the gateway is
    down) and BlockedAddress (the SSRF guard) go
    to every caller waiting on that origin and nothing is cached; TooManyRedirects is "unavailable" (RFC 9309
    2.3.1.2); any other FetchError is "unreachable" with the error as `cause`.
    """

    def __init__(self, fetch: RobotsFetch, agent: str, size: int = 10_000, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self._fetch = fetch
        self.agent = validate_agent_token(agent)  # the product token groups are matched against (--robots-agent)
        self._size = size
        self._max_bytes = max_bytes
        # origin -> (rules, expires_at, weight): the cache itself, bounded by entries and by approximate bytes
        self._rules: OrderedDict[str, tuple[RobotsRules, float, int]] = OrderedDict()
        self._bytes = 0
        # origin -> in-progress fetch: one request per origin however many fetch tasks ask at once
        self._pending: dict[str, asyncio.Future[RobotsRules]] = {}
        self.fetches = 0

    def __repr__(self) -> str:
        held = f"origins={len(self._rules)}, bytes~{self._bytes}"
        return f"RobotsCache(agent={self.agent!r}, {held}, fetches={self.fetches})"

    async def allowed(self, url: str) -> bool | None:
        """True or False by the origin's rules; None when robots.txt is unreachable (ask again later)."""
        return (await self.check(url)).allowed

    async def check(self, url: str) -> RobotsVerdict:
        """The verdict for `url` with the rules behind it (crawl delay, sitemaps, state, status, cause)."""
        origin, path = split_url(url)
        rules = await self.rules(origin)
        if rules.unreachable:
            return RobotsVerdict(None, rules)
        if rules.check_cost(path) > CHECK_THREAD_COST:  # a hostile file must not stall every other fetch
            return RobotsVerdict(await asyncio.to_thread(rules.allowed, path), rules)
        return RobotsVerdict(rules.allowed(path), rules)

    async def rules(self, origin: str) -> RobotsRules:
        """The rules for `origin` (`scheme://host[:port]`), fetched at most once per TTL. Raises ProxyAuthError,
        BlockedAddress (see the class) and whatever else the fetch callback raises that is not a FetchError."""
        hit = self._rules.get(origin)
        if hit is not None and hit[1] > time.monotonic():
            self._rules.move_to_end(origin)
            return hit[0]
        pending = self._pending.get(origin)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[RobotsRules] = asyncio.get_running_loop().create_future()
        self._pending[origin] = fut  # reserved before the first await: later askers wait on this fetch
        try:
            self.fetches += 1
            rules, ttl = await self._load(origin)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            self._pending.pop(origin, None)
        self._store(origin, rules, ttl)
        fut.set_result(rules)
        return rules

    async def _load(self, origin: str) -> tuple[RobotsRules, float]:
        try:
            status, body = await self._fetch(origin + "/robots.txt")
        except (ProxyAuthError, BlockedAddress, GatewayUnreachable):  # not the site: never cached
            raise  # a configuration error and the SSRF guard's verdict: the caller's business, never cached
        except TooManyRedirects as exc:
            return RobotsRules(state=RobotsState.UNAVAILABLE, cause=_detached(exc)), CACHE_TTL_S
        except FetchError as exc:
            return RobotsRules(state=RobotsState.UNREACHABLE, cause=_detached(exc)), UNREACHABLE_RETRY_S
        if 200 <= status < 300:
            if len(body) > THREAD_PARSE_BYTES:
                parsed = await asyncio.to_thread(parse_robots, body, self.agent)
            else:
                parsed = parse_robots(body, self.agent)
            return RobotsRules(parsed.rules, parsed.crawl_delay_s, parsed.sitemaps, status=status), CACHE_TTL_S
        if 300 <= status < 500 and status != 429:  # 429: "slow down" is not "no robots.txt" (as Google reads it)
            return RobotsRules(state=RobotsState.UNAVAILABLE, status=status), CACHE_TTL_S
        return RobotsRules(state=RobotsState.UNREACHABLE, status=status or None), UNREACHABLE_RETRY_S

    def _store(self, origin: str, rules: RobotsRules, ttl: float) -> None:
        old = self._rules.pop(origin, None)
        if old is not None:
            self._bytes -= old[2]
        weight = _weight(rules)
        self._rules[origin] = (rules, time.monotonic() + ttl, weight)
        self._bytes += weight
        while len(self._rules) > 1 and (len(self._rules) > self._size or self._bytes > self._max_bytes):
            _, (_, _, dropped) = self._rules.popitem(last=False)
            self._bytes -= dropped
