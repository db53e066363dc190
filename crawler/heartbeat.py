"""Worker heartbeats: each worker's record under `worker:<id>` with a TTL, and the `workers` zset of last beats.

Written by the worker's housekeeping stage, read by `crawl workers`, `crawl top` and `crawl stats`; a SIGKILLed
worker disappears within the heartbeat TTL because its record expires and the zset forgets stale members.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from crawler.connection import redis_errors
from crawler.keys import CrawlKeys


async def publish_heartbeat(redis: aioredis.Redis, crawl_name: str, info: dict[str, Any], ttl_s: float) -> None:
    keys = CrawlKeys(crawl_name)
    now = time.time()
    wid = str(info["id"])
    with redis_errors("heartbeat"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.worker(wid), json.dumps(info, separators=(",", ":")), px=int(ttl_s * 1000))
            pipe.zadd(keys.workers, {wid: now})
            pipe.zremrangebyscore(keys.workers, "-inf", now - ttl_s)  # bounded: forget the dead
            await pipe.execute()


async def remove_heartbeat(redis: aioredis.Redis, crawl_name: str, worker_id: str) -> None:
    keys = CrawlKeys(crawl_name)
    with redis_errors("heartbeat removal"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.worker(worker_id))
            pipe.zrem(keys.workers, worker_id)
            await pipe.execute()


async def live_workers(redis: aioredis.Redis, crawl_name: str) -> list[dict[str, Any]]:
    """Workers whose heartbeat has not expired; a SIGKILLed worker disappears within the heartbeat TTL."""
    keys = CrawlKeys(crawl_name)
    ids = await redis.zrange(keys.workers, 0, -1)
    if not ids:
        return []
    vals = await redis.mget([keys.worker(i.decode() if isinstance(i, bytes) else str(i)) for i in ids])
    return sorted((json.loads(v) for v in vals if v), key=lambda w: str(w.get("id")))
