"""The one Redis connection factory: a URL when one is given, else the embedded server (`crawler.embedded`).

Every Redis client of every command comes from `open_redis`: a blocking pool (callers wait for a connection
instead of failing), redis-py's retry on connection errors, and a name per client so the embedded server can
tell when its last user has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crawler.embedded import EmbeddedPaths, embedded_paths, ensure_embedded_server, lock_fd, shutdown_if_last
from crawler.errors import ConfigError, RedisUnavailable
from crawler.redact import redact_url

_SCHEMES = ("redis", "rediss", "unix")


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """The Redis boundary: redis-py's errors (and the OSErrors its sockets raise) become RedisUnavailable.

    Used by every module that talks to Redis (frontier, heartbeat, gateway slots), so callers above handle one
    error type. The cause is kept for the log; the message names the operation, never the URL's password.
    """
    try:
        yield
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(f"Redis unavailable during {what} ({exc.__class__.__name__})") from exc


def validate_redis_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise ConfigError(f"malformed Redis URL {redact_url(url)}: bad port or user-info") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(f"Redis URL {redact_url(url)} must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"Redis URL {redact_url(url)} has no host")
    if parts.scheme == "unix" and not parts.path:
        raise ConfigError(f"Redis URL {redact_url(url)} has no socket path")


def _client(url: str, name: str) -> aioredis.Redis:
    tcp: dict[str, object] = {} if url.startswith("unix:") else {"socket_keepalive": True}
    # A blocking pool: when every connection is busy, callers wait for one instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        client_name=name,
        socket_connect_timeout=5,
        health_check_interval=15,
        max_connections=32,
        timeout=30,
        **tcp,
    )
    return aioredis.Redis(
        connection_pool=pool,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def _connected(url: str, name: str) -> aioredis.Redis:
    client = _client(url, name)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc.__class__.__name__}") from exc
    return client


@contextlib.asynccontextmanager
async def open_redis(redis_url: str | None, home: Path) -> AsyncIterator[aioredis.Redis]:
    """Yield a connected client; RedisUnavailable (with the redacted URL) when it cannot be reached."""
    name = f"crawl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    embedded: EmbeddedPaths | None = None
    if redis_url is None:
        paths = await asyncio.to_thread(embedded_paths, home)
        lock = paths.lock

        fd = await asyncio.to_thread(lock_fd, lock)
        try:
            embedded = await asyncio.to_thread(ensure_embedded_server, home)
            url = embedded.url
            client = await _connected(url, name)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    else:
        url = redis_url
        client = await _connected(url, name)
    try:
        yield client
    finally:
        try:
            if embedded is not None:
                await shutdown_if_last(client, embedded, name)
        finally:
            await client.aclose()
