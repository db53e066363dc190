"""Reading and stopping recurring URLs (`crawl schedule`): the schedule's time wheel as a command sees it.

The worker never calls this: passes come due inside the lease script. Listing and cancelling read the wheel, and
a cancel may read the leases, the retries and the URL's host queue: a command's cost, bounded by the crawl.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

from crawler.connection import redis_errors
from crawler.frontier import Frontier
from crawler.frontier_state import Scheduled, _recurring_url, _text


class Recurring:
    """The recurring URLs of one crawl."""

    def __init__(self, frontier: Frontier) -> None:
        self.f = frontier

    def __repr__(self) -> str:
        return f"Recurring({self.f.keys.name!r})"

    # -- ----------------------------------------------------------------------------------
    async def waiting(self, limit: int = 100) -> list[Scheduled]:
        """Recurring URLs waiting for their next pass, earliest second first, at most `limit`."""
        out: list[Scheduled] = []
        with redis_errors("schedule"):
            async for second, due in self._buckets():
                stored = await self.f.redis.lrange(self.f.keys.recur_bucket(second), 0, limit - len(out) - 1)
                out += [Scheduled.of(_text(e), due) for e in stored]
                if len(out) >= limit:
                    break
        return out

    async def _buckets(self, page: int = 100) -> AsyncIterator[tuple[str, int]]:
        """The schedule's seconds with waiting entries, earliest first: (second, due ms)."""
        start = 0
        while True:
            rows: list[tuple[Any, float]] = await self.f.redis.zrange(  # type: ignore[assignment]
                self.f.keys.recur, start, start + page - 1, withscores=True
            )
            for second, due in rows:
                yield _text(second), int(due)
            if len(rows) < page:
                return
            start += page

    async def cancel(self, url: str) -> tuple[int, bool]:
        """Stop the schedule of one URL (its fetch URL). Returns (stopped now, pending): stopped now when it was
        waiting for its next pass (it is done); pending when a pass of it is queued, deferred or leased, which then
        ends the schedule at its ack. (0, False) when the URL has no schedule. Finding it reads the schedule, the
        leases, the retries and its host's queue: a command's cost, never a worker's."""
        k = self.f.keys
        with redis_errors("schedule cancel"):
            found = await self._waiting(url)
            if not found and not await self._in_progress(url):
                return 0, False
        removed, marked = await self.f._run("cancel", [k.recur, k.stats], [url, *found])
        return int(removed), bool(marked)

    async def _waiting(self, url: str) -> list[str]:
        """(bucket second, entry) pairs, flattened, of `url` in the schedule."""
        found: list[str] = []
        async for second, _ in self._buckets():
            async for text in self._list(self.f.keys.recur_bucket(second)):
                if _recurring_url(text) == url:
                    found += [second, text]
        return found

    async def _in_progress(self, url: str) -> bool:
        """Whether a pass of recurring `url` is leased, deferred or queued now."""
        pattern = "* " + "".join("\\" + c if c in "*?[]\\" else c for c in url) + "*"
        for zset in (self.f.keys.leases, self.f.keys.deferred):
            async for member, _ in self.f.redis.zscan_iter(zset, match=pattern, count=1000):
                entry_text = _text(member)
                if zset == self.f.keys.leases:
                    entry_text = entry_text.partition(" ")[2]
                if _recurring_url(entry_text) == url:
                    return True
        host = url.partition("://")[2].partition("/")[0]
        async for text in self._list(self.f.keys.queue(host)):
            if _recurring_url(text) == url:
                return True
        return False

    async def _list(self, key: str, page: int = 1000) -> AsyncIterator[str]:
        for start in itertools.count(0, page):
            stored = await self.f.redis.lrange(key, start, start + page - 1)
            for e in stored:
                yield _text(e)
            if len(stored) < page:
                return

    async def cancel_all(self) -> int:
        """Stop every schedule: waiting URLs are done now (returned), passes in progress end at their ack."""
        return int(await self.f._run("cancel_all", [self.f.keys.recur, self.f.keys.stats], []))
