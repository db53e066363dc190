"""Redis goes away mid-crawl and comes back: the worker waits it out, and nothing is lost.

A private Redis (AOF, appendfsync always) is stopped with SIGTERM while a worker is busy, kept down until the
worker has noticed, then started again on the same port and directory. The worker must neither crash nor hang,
must finish the crawl once Redis is back, and must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.testing.services import RedisServer, RunningServer, start_server, wait_until
from tests.helpers import count_lines, crawl, read_records, spawn_crawl, stats, worker_args

PAGES = 300
STOP_AFTER = 50  # records written before Redis goes away


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hostile() -> Iterator[RunningServer]:
    with start_server("crawler.testing.hostile_server", "--port", 0) as h:
        yield h


def warnings(log: Path) -> list[str]:
    return [ln for ln in log.read_text(errors="replace").splitlines() if "Redis unavailable" in ln]


def outage_seen(log: Path) -> bool:
    """The worker failed to lease and to ack, and its back-off has grown to 1.6 s: Redis has been away for
    more than a second and a half, past redis-py's own few reconnect attempts."""
    lines = warnings(log)
    return any("while acking" in ln for ln in lines) and any(
        "while leasing" in ln and "retrying in 1.6s" in ln for ln in lines
    )


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_worker_survives_a_redis_restart_and_loses_nothing(
    how: signal.Signals, private_redis: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    urls = [f"{hostile.url}/slow/50?n={i}" for i in range(PAGES)]
    f = tmp_path / "seeds.txt"
    f.write_text("\n".join(urls) + "\n")
    assert crawl(["enqueue", str(f), "--redis", private_redis.url, "--crawl", crawl_name]).returncode == 0
    out, log = tmp_path / "out", tmp_path / "worker.log"
    port = private_redis.port
    w = spawn_crawl(
        worker_args(
            private_redis.url,
            crawl_name,
            out,
            "--no-robots",
            "--no-follow",
            "--lease-ttl-s",
            "30",
            "--concurrency",
            "16",
            "--per-host-concurrency",
            "4",
        ),
        log=log,
    )
    try:
        # Stop Redis while fetches are in flight: their results are written and then cannot be acked (a fetch
        # that ends now is committed at least 20 ms later, after the group-commit delay), so the outage hits
        # both leasing and acking.
        wait_until(
            lambda: count_lines(out) >= STOP_AFTER and hostile.stats()["in_flight"] > 0, timeout_s=30, interval_s=0.005
        )
        # SIGTERM: a clean shutdown; SIGKILL: a crash (appendfsync always: every acknowledged write is on disk)
        private_redis.stop(how)
        at_stop = count_lines(out)
        assert at_stop < PAGES, "the crawl finished before the outage: the test proves nothing"
        try:
            wait_until(lambda: outage_seen(log) or w.poll() is not None, timeout_s=20)
        except TimeoutError:
            pytest.fail(f"the worker did not keep retrying through the outage:\n{log.read_text()[-4000:]}")
        assert w.poll() is None, f"the worker exited during the outage:\n{log.read_text()[-3000:]}"
        assert private_redis.port == port
        private_redis.start()  # same port, same directory: the AOF brings the frontier back
        try:
            wait_until(
                lambda: stats(private_redis.url, crawl_name)["done"] >= PAGES or w.poll() is not None,
                timeout_s=40,
                interval_s=0.2,
            )
        except TimeoutError:
            pytest.fail(
                f"the crawl did not finish after Redis came back: {stats(private_redis.url, crawl_name)}\n"
                f"{log.read_text()[-4000:]}"
            )
        assert w.poll() is None, f"the worker exited:\n{log.read_text()[-3000:]}"
        w.send_signal(signal.SIGTERM)
        code = w.wait(timeout=30)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert warnings(log), "the worker never noticed the outage"

    records = read_records(out)
    got = Counter(r["url"] for r in records)
    assert set(got) == set(urls), {"missing": sorted(set(urls) - set(got))[:10]}
    duplicates = sorted(u for u, n in got.items() if n > 1)
    s = stats(private_redis.url, crawl_name)
    assert s["enqueued"] == PAGES and s["done"] + s["dead"] == s["enqueued"], s
    assert s["dead"] == 0 and s["done"] == PAGES, s
    assert s["queued"] == s["inflight"] == s["deferred"] == 0, s
    # Records are flushed before the ack, and a settle that failed is retried with the same leases, so an
    # ack lost in the outage is applied once Redis is back: no URL is fetched twice.
    assert duplicates == [], f"{len(duplicates)} URLs written twice: {duplicates[:5]}"
    assert all(r["status"] == 200 for r in records)


def test_sigterm_while_redis_is_down_exits_within_a_bound_and_loses_nothing(
    private_redis: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    """The first signal must end the process even when Redis is away: results written but not acked stay in the
    output, their leases expire, and a later worker finishes the crawl. Nothing is lost."""
    urls = [f"{hostile.url}/slow/50?n={i}" for i in range(PAGES)]
    f = tmp_path / "seeds.txt"
    f.write_text("\n".join(urls) + "\n")
    assert crawl(["enqueue", str(f), "--redis", private_redis.url, "--crawl", crawl_name]).returncode == 0
    out, log = tmp_path / "out", tmp_path / "worker.log"
    w = spawn_crawl(
        worker_args(
            private_redis.url,
            crawl_name,
            out,
            "--no-robots",
            "--no-follow",
            "--grace-s",
            "2",
            "--lease-ttl-s",
            "3",
            "--concurrency",
            "16",
            "--per-host-concurrency",
            "0",
        ),
        log=log,
    )
    try:
        wait_until(lambda: count_lines(out) >= STOP_AFTER, timeout_s=30, interval_s=0.005)
        private_redis.stop(signal.SIGKILL)
        wait_until(lambda: bool(warnings(log)), timeout_s=20)
        w.send_signal(signal.SIGTERM)
        # grace 2 s, then the final commit gives up after max(10 s, grace): well inside 40 s
        assert w.wait(timeout=40) == 0, log.read_text()[-3000:]
    finally:
        if w.poll() is None:
            w.kill()
            w.wait(timeout=10)
    private_redis.start()
    run = crawl(
        worker_args(
            private_redis.url,
            crawl_name,
            tmp_path / "out2",
            "--until-idle",
            "--no-robots",
            "--no-follow",
            "--lease-ttl-s",
            "3",
            "--concurrency",
            "32",
            "--per-host-concurrency",
            "0",
        ),
        timeout_s=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    got = {r["url"] for r in read_records(out) + read_records(tmp_path / "out2")}
    assert got == set(urls)
    s = stats(private_redis.url, crawl_name)
    assert s["done"] + s["dead"] == s["enqueued"] == PAGES and s["dead"] == 0
