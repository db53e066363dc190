"""robots.txt with RFC 9309 semantics: parsing and matching are pure; `RobotsCache` fetches once per host.

- The group for our product token wins, else `*`; rules of all matching groups are merged (9309 2.2.1).
- The longest matching path wins; on a tie, Allow wins. `*` and `$` are supported.
- 4xx ("unavailable"): allow everything. 5xx or unreachable: disallow everything for a while, then ask again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309: at least 500 KiB must be parsed
UNREACHABLE_RETRY_S = 60.0
CACHE_TTL_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Rule:
    allow: bool
    path: str
    regex: re.Pattern[str] | None  # None: a plain prefix


@dataclass(frozen=True, slots=True)
class RobotsRules:
    rules: tuple[Rule, ...] = ()
    disallow_all: bool = False
    unreachable: bool = False  # 5xx or no answer: nothing may be fetched now, and the verdict is short-lived

    def allowed(self, path: str) -> bool:
        if self.disallow_all:
            return False
        if path == "/robots.txt":
            return True
        path = _norm_path(path)
        best: Rule | None = None
        for r in self.rules:
            matched = r.regex.match(path) is not None if r.regex else path.startswith(r.path)
            if matched and (
                best is None or len(r.path) > len(best.path) or (len(r.path) == len(best.path) and r.allow)
            ):
                best = r
        return best is None or best.allow


ALLOW_ALL = RobotsRules()
UNREACHABLE = RobotsRules(disallow_all=True, unreachable=True)


def _norm_path(p: str) -> str:
    try:
        return unquote(p, errors="strict")
    except UnicodeDecodeError:
        return p


def _rule(allow: bool, path: str) -> Rule:
    path = _norm_path(path)
    if "*" in path or path.endswith("$"):
        anchored = path.endswith("$")
        body = path[:-1] if anchored else path
        pattern = ".*".join(re.escape(part) for part in body.split("*")) + ("$" if anchored else "")
        return Rule(allow, path, re.compile(pattern))
    return Rule(allow, path, None)


def parse_robots(text: str, user_agent: str) -> RobotsRules:
    """Rules that apply to `user_agent` (its product token is matched case-insensitively)."""
    token = user_agent.split("/", 1)[0].strip().lower()
    groups: list[tuple[list[str], list[Rule]]] = []
    agents: list[str] = []
    rules: list[Rule] = []
    in_rules = False
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (x.strip() for x in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if in_rules:
                groups.append((agents, rules))
                agents, rules, in_rules = [], [], False
            agents.append(value.lower())
        elif key in ("allow", "disallow"):
            in_rules = True
            if value:
                rules.append(_rule(key == "allow", value))
    if agents:
        groups.append((agents, rules))
    specific = [rs for a, rs in groups if token in a]
    chosen = specific if specific else [rs for a, rs in groups if "*" in a]
    return RobotsRules(tuple(r for rs in chosen for r in rs))


class RobotsCache:
    """Per-host rules, fetched once (concurrent askers share one fetch), bounded LRU."""

    def __init__(
        self, fetch: Callable[[str], Awaitable[tuple[int, bytes]]], user_agent: str, size: int = 10_000
    ) -> None:
        self._fetch = fetch  # robots URL -> (status, body); status 0: unreachable (must not raise)
        self._ua = user_agent
        self._size = size
        # origin -> (rules, expires_at): the cache itself, bounded
        self._rules: OrderedDict[str, tuple[RobotsRules, float]] = OrderedDict()
        # origin -> in-progress fetch: one request per host however many fetch tasks ask at once
        self._pending: dict[str, asyncio.Future[RobotsRules]] = {}
        self.fetches = 0

    def __repr__(self) -> str:
        return f"RobotsCache(hosts={len(self._rules)}, fetches={self.fetches})"

    async def allowed(self, url: str) -> bool | None:
        """True or False by the host's rules; None when robots.txt is unreachable (ask again later)."""
        scheme, rest = url.split("://", 1)
        host, _, path = rest.partition("/")
        origin = f"{scheme}://{host}"
        rules = await self.rules(origin)
        return None if rules.unreachable else rules.allowed("/" + path)

    async def rules(self, origin: str) -> RobotsRules:
        hit = self._rules.get(origin)
        if hit is not None and hit[1] > time.monotonic():
            self._rules.move_to_end(origin)
            return hit[0]
        pending = self._pending.get(origin)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[RobotsRules] = asyncio.get_running_loop().create_future()
        self._pending[origin] = fut
        try:
            self.fetches += 1
            status, body = await self._fetch(origin + "/robots.txt")
            if 200 <= status < 300:
                rules = parse_robots(body[:MAX_ROBOTS_BYTES].decode("utf-8", "replace"), self._ua)
                ttl = CACHE_TTL_S
            elif 400 <= status < 500:
                rules, ttl = ALLOW_ALL, CACHE_TTL_S
            else:
                rules, ttl = UNREACHABLE, UNREACHABLE_RETRY_S
        except BaseException as exc:
            fut.set_exception(exc) if not isinstance(exc, asyncio.CancelledError) else fut.cancel()
            fut.exception() if not fut.cancelled() else None  # mark retrieved
            raise
        finally:
            self._pending.pop(origin, None)
        self._rules[origin] = (rules, time.monotonic() + ttl)
        while len(self._rules) > self._size:
            self._rules.popitem(last=False)
        fut.set_result(rules)
        return rules
