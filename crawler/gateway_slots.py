"""Fleet-wide cap on connections through the gateway (`--proxy-max-connections`), coordinated through Redis.

Residential plans cap concurrent connections per account, for all workers together. Each request through the
gateway holds one slot, a member of the `proxy_slots` sorted set scored by its expiry (so a SIGKILLed worker's
slots free themselves). With the cap on, connections are not kept alive (an idle keep-alive connection still
counts at the gateway), and a slot is given back a moment after its connection closed, so the gateway has seen
the close before another worker opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from crawler.backoff import Backoff
from crawler.connection import redis_errors
from crawler.errors import RedisUnavailable
from crawler.frontier import now_ms
from crawler.keys import CrawlKeys

LINGER_S = 0.05


class GatewaySlots:
    def __init__(self, redis: aioredis.Redis, crawl_name: str, limit: int, hold_s: float) -> None:
        self.redis = redis
        self.keys = CrawlKeys(crawl_name)
        self.limit = limit
        self.hold_s = hold_s  # a slot outlives a request by at most this: the attempt's deadline plus margin
        lua = resources.files("crawler") / "lua"
        self._take = redis.register_script((lua / "proxy_slot.lua").read_text())
        self._ids = itertools.count()
        self._prefix = secrets.token_hex(4)
        self.held = 0  # slots this process holds now
        self.waits = 0  # times a request had to wait for a slot
        self._releases: set[asyncio.Task[None]] = set()  # linger tasks, kept referenced until done

    def __repr__(self) -> str:
        return f"GatewaySlots(limit={self.limit}, held={self.held}, waits={self.waits})"

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        token = f"{self._prefix}-{next(self._ids)}"
        poll = Backoff(first_s=0.005, cap_s=0.1)  # a full fleet and an absent Redis are waited out alike
        while True:
            args: list[Any] = [self.keys.prefix, now_ms(), now_ms() + int(self.hold_s * 1000), token, self.limit]
            # Redis away: wait like a full fleet, never exceed the cap
            with contextlib.suppress(RedisUnavailable), redis_errors("gateway slot"):
                if await self._take(keys=[self.keys.proxy_slots], args=args):
                    break
            self.waits += 1
            poll.failed()
            await poll.wait()
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            task = asyncio.create_task(self._release(token))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release(self, token: str) -> None:
        await asyncio.sleep(LINGER_S)
        with contextlib.suppress(RedisUnavailable), redis_errors("gateway slot release"):
            await self.redis.zrem(self.keys.proxy_slots, token)
