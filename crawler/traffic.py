"""Crawl-wide traffic counters: bytes through each gateway (what a residential plan bills), and 304s with the
bytes they saved.

Each worker adds what it carried since its last heartbeat (deltas, so a worker that dies loses at most one
beat's worth) to the `traffic` hash (`crawler/keys.py`), read by `crawl stats`. The bytes a 304 saved are
estimated from the mean size of the crawl's 200 answers (this worker's, in its own throughput line): the server
did not send the body, so its size is only known from other passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from crawler.connection import redis_errors
from crawler.keys import CrawlKeys

GATEWAY = "gateway:"  # hash field prefix: gateway:<redacted URL> -> body bytes through it


@dataclass(slots=True)
class Traffic:
    """One worker's running totals, and what it has already told Redis."""

    gateway_bytes: dict[str, int] = field(default_factory=dict)
    not_modified: int = 0
    bytes_200: int = 0
    pages_200: int = 0
    _told: dict[str, int] = field(default_factory=dict)

    def page(self, status: int | None, nbytes: int, not_modified: bool) -> None:
        if not_modified:
            self.not_modified += 1
        elif status == 200:
            self.pages_200 += 1
            self.bytes_200 += nbytes

    @property
    def saved_bytes(self) -> int:
        return self.not_modified * self.bytes_200 // self.pages_200 if self.pages_200 else 0

    def deltas(self) -> dict[str, int]:
        now = {**{GATEWAY + k: v for k, v in self.gateway_bytes.items()}, "not_modified": self.not_modified}
        now |= {"bytes_200": self.bytes_200, "pages_200": self.pages_200}
        out = {k: v - self._told.get(k, 0) for k, v in now.items() if v != self._told.get(k, 0)}
        return out

    def told(self, deltas: dict[str, int]) -> None:
        for k, v in deltas.items():
            self._told[k] = self._told.get(k, 0) + v


async def publish(redis: aioredis.Redis, crawl_name: str, traffic: Traffic) -> None:
    """Add this worker's new traffic to the crawl's totals (one pipelined round trip; nothing when none)."""
    deltas = traffic.deltas()
    if not deltas:
        return
    key = CrawlKeys(crawl_name).traffic
    with redis_errors("traffic"):
        async with redis.pipeline(transaction=False) as pipe:
            for k, v in deltas.items():
                pipe.hincrby(key, k, v)
            await pipe.execute()
    traffic.told(deltas)


async def read(redis: aioredis.Redis, crawl_name: str) -> dict[str, Any]:
    """The crawl's totals for `crawl stats`: bytes per gateway, 304s, bytes they saved (estimated)."""
    with redis_errors("traffic"):
        raw = await redis.hgetall(CrawlKeys(crawl_name).traffic)
    vals = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    not_modified, pages_200 = vals.get("not_modified", 0), vals.get("pages_200", 0)
    return {
        "gateway_bytes": {k[len(GATEWAY) :]: v for k, v in vals.items() if k.startswith(GATEWAY)},
        "not_modified": not_modified,
        # the crawl's mean 200 body for each 304: the size of the body not sent is only known from other passes
        "saved_bytes_estimate": not_modified * vals.get("bytes_200", 0) // pages_200 if pages_200 else 0,
    }
