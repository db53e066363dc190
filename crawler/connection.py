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
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

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


class Reconnects:
    """Every reconnection of one client's pool, told to listeners before the first command on it.

    A connection that connects again (its socket broke) is the only way to reach a Redis that was restarted
    (maybe from an AOF missing its last second) or replaced by a failover; whatever a process believes Redis holds
    (the worker's seen-link cache) must be forgotten then, whether or not any stage saw an error. The first
    connect of a connection the pool grows under load is not one: it would throw the cache away for nothing.
    """

    def __init__(self) -> None:
        self.count = 0
        self._listeners: list[Callable[[], None]] = []
        self._connected_once: weakref.WeakSet[Any] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"Reconnects(count={self.count}, listeners={len(self._listeners)})"

    def listen(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def connected(self, connection: Any) -> None:
        if connection not in self._connected_once:
            self._connected_once.add(connection)
            return
        self.count += 1
        for fn in self._listeners:
            fn()


class _Pool(aioredis.BlockingConnectionPool):
    """A blocking pool (callers wait for a free connection instead of failing) that reports (re)connections."""

    def __init__(self, **kwargs: Any) -> None:
        self.reconnects = Reconnects()
        super().__init__(**kwargs)

    def make_connection(self) -> Any:
        conn = super().make_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        conn.register_connect_callback(self.reconnects.connected)  # kept by a WeakMethod: the pool outlives it
        return conn


def on_reconnect(client: aioredis.Redis, fn: Callable[[], None]) -> None:
    """Call `fn` whenever one of `client`'s connections (from `open_redis`) connects to Redis again."""
    pool = client.connection_pool
    if isinstance(pool, _Pool):
        pool.reconnects.listen(fn)


def _client(url: str, name: str) -> aioredis.Redis:
    tcp: dict[str, object] = {} if url.startswith("unix:") else {"socket_keepalive": True}
    pool = _Pool.from_url(
        url,
        client_name=name,
        socket_connect_timeout=5,
        health_check_interval=15,
        max_connections=32,
        timeout=30,
        **tcp,
    )
    # no redis-py retries: an outage surfaces as RedisUnavailable at once, and each stage backs off its own way
    # (crawler.backoff); redis-py ignores retry settings given beside a ready pool anyway
    return aioredis.Redis(connection_pool=pool)


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
