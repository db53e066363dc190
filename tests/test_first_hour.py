"""What a new user hits first (issue 12), each through the real CLI: a small --max-pages crawl at the default
concurrency, a second run of the same seeds, a closed-port seed, exit codes a fleet can act on, `crawl dead`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crawler.testing.services import RunningServer, free_port, start_server
from tests.helpers import crawl, read_records, worker_args


@pytest.fixture(scope="module")
def site() -> Iterator[RunningServer]:
    with start_server("crawler.testing.site_server", "--port", 0, "--pages", 300, "--seed", 3) as s:
        yield s


def seeds(tmp_path: Path, *urls: str) -> Path:
    f = tmp_path / "seeds.txt"
    f.write_text("".join(u + "\n" for u in urls))
    return f


def run_args(redis_url: str, name: str, out: Path, seed_file: Path, *extra: str) -> list[str]:
    return ["run", str(seed_file), "--redis", redis_url, "--crawl", name, "--output", str(out), *extra]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("max_pages", [10, 40])
def test_max_pages_at_the_default_concurrency_stops_and_exits_0(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: RunningServer, max_pages: int
) -> None:
    out = tmp_path / "out"
    run = crawl(
        run_args(redis_server.url, crawl_name, out, seeds(tmp_path, site.url + "/p/0"), "--max-pages", str(max_pages))
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"--max-pages {max_pages} reached" in run.stderr
    assert 1 <= len(read_records(out)) <= max_pages


def test_a_second_run_of_the_same_seeds_says_why_nothing_happens(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: RunningServer
) -> None:
    f = seeds(tmp_path, site.url + "/p/1")
    first = crawl(run_args(redis_server.url, crawl_name, tmp_path / "a", f, "--max-pages", "3"))
    assert first.returncode == 0 and "already seen" not in first.stderr
    again = crawl(run_args(redis_server.url, crawl_name, tmp_path / "b", f))
    assert again.returncode == 0
    assert "added=0 duplicates=1" in again.stdout
    note = [ln for ln in again.stderr.splitlines() if "already seen" in ln]
    assert note and f"crawl {crawl_name} at redis://127.0.0.1:" in note[0]
    assert "--crawl NAME" in note[0] and "crawl purge --yes" in note[0]


@pytest.mark.timeout(90)
def test_a_closed_port_seed_fails_fast_and_names_the_refused_connection(
    redis_server: Any, crawl_name: str, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    t0 = time.monotonic()
    run = crawl(run_args(redis_server.url, crawl_name, tmp_path / "out", seeds(tmp_path, url)))
    took = time.monotonic() - t0
    assert run.returncode == 0, run.stderr[-2000:]
    dead = crawl(["dead", "--json", "--redis", redis_server.url, "--crawl", crawl_name])
    (entry,) = [json.loads(x) for x in dead.stdout.splitlines()]
    assert entry["url"] == url and entry["error"]["kind"] == "connect", entry
    assert "refused" in entry["error"]["message"].lower(), entry  # the real cause, not "robots_unreachable"
    assert took < 45, f"a refused connection took {took:.0f}s to dead-letter"


def test_crawl_dead_says_when_there_is_nothing(redis_server: Any, crawl_name: str) -> None:
    run = crawl(["dead", "--redis", redis_server.url, "--crawl", crawl_name])
    assert run.returncode == 0 and run.stdout.strip() == f"no dead URLs in crawl {crawl_name} at {redis_server.url}"


def test_exit_codes_tell_a_bad_setting_from_an_absent_redis(tmp_path: Path) -> None:
    bad = crawl(["worker", "--redis", "redis://127.0.0.1:1/0", "--concurrency", "0"])
    assert bad.returncode == 2 and "--concurrency" in bad.stderr and "Traceback" not in bad.stderr
    port = free_port()
    t0 = time.monotonic()
    absent = crawl(worker_args(f"redis://127.0.0.1:{port}/0", "x", tmp_path / "out", "--redis-wait", "2"))
    assert absent.returncode == 4, absent.stderr[-2000:]
    lines = [json.loads(x) for x in absent.stderr.splitlines() if x.startswith("{")]
    waits = [o for o in lines if "waiting for it" in o.get("message", "")]
    assert waits and all(o["level"] == "warning" for o in waits)  # one line per attempt while it waits
    assert lines[-1]["level"] == "error" and "--redis-wait" in lines[-1]["message"]
    assert time.monotonic() - t0 < 30
