"""A Redis rolled back by its last second of writes costs re-fetches, never a URL (issue 14).

With `appendfsync everysec`, an OS crash or a failover to a lagging replica loses about the last second of
writes. Emulated with real processes: a private redis-server (AOF, `appendfsync always`, so the file on disk is
exactly the server's state at any instant) is SIGKILLed mid-crawl, its AOF is cut back to the length it had
one second earlier (at the last whole command, a MULTI/EXEC block kept whole, as Redis writes it), and it is
started again on the same port and directory. The worker (`crawl worker --until-idle`, following links on a
site with 5-15 links per page) must finish the crawl with every reachable page recorded.

What the cut undoes: acks (their pages go back to "leased" and come back by reclaim, or to "queued"), leases,
and the `seen` fingerprints of the links those acks added. The worker's local seen-link cache still remembers
those links; unless it is cleared (on a Redis error, or when Redis's `run_id` changes), a re-fetched page's links
are filtered out locally and never reach the rolled-back frontier again: lost for good, never dead-lettered.

A fast crawl (about a thousand acks in the lost second) with two ways back: Redis down until the worker has seen
a call fail (a crash and a restart), and Redis started again at once (a quick restart or failover). And a slow,
polite crawl restarted at once, where often only the leaser has a call in flight when Redis dies: no stage may
see an error and the `run_id` check (every heartbeat TTL / 3) comes too late, so the worker clears the cache on
every new Redis connection (`crawler.connection.on_reconnect`), before the first command on it.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crawler.keys import CrawlKeys
from crawler.testing.services import DURABLE, SITE_SERVER, RedisServer, start_server, wait_until
from crawler.testing.site_server import expected_pages
from crawler.urls import dedup_key
from tests.helpers import count_lines, enqueue, read_records, spawn_crawl, stats, worker_args

SEED = 14
ROLLBACK_S = 1.0  # the writes lost: the last second before the crash
# No AOF rewrite during the test (the file stays one stream of commands we can cut); a cut tail loads.
ROLLBACK_REDIS = (*DURABLE, "--auto-aof-rewrite-percentage", "0", "--aof-load-truncated", "yes")


@dataclass(frozen=True, slots=True)
class LostWrites:
    """What the cut removed, counted from the dropped commands themselves."""

    bytes: int
    seen_adds: int  # link fingerprints that left the `seen` set
    acks: int  # pages whose `done` was undone

    def __str__(self) -> str:
        return f"{self.bytes} bytes cut: {self.seen_adds} seen-set adds and {self.acks} acks undone"


def aof_file(directory: Path) -> Path:
    """The file Redis appends to: `appendonly.aof` (Redis <= 6), or the last incr file of the manifest (7+)."""
    manifest = next((directory / "appendonlydir").glob("*.manifest"), None)
    if manifest is None:
        return directory / "appendonly.aof"
    incr = [ln.split()[1] for ln in manifest.read_text().splitlines() if ln.split()[-2:] == ["type", "i"]]
    return directory / "appendonlydir" / incr[-1]


def commands(data: bytes, start: int = 0) -> Iterator[tuple[int, list[bytes]]]:
    """(offset after it, argv) of each whole RESP command from `start`; a command cut off at the end is left out."""
    pos, end = start, len(data)
    while pos < end:
        try:
            if data[pos : pos + 1] != b"*":
                raise ValueError(f"not a command at offset {pos} (an RDB preamble?)")
            nl = data.index(b"\r\n", pos)
            argv, p = [], nl + 2
            for _ in range(int(data[pos + 1 : nl])):
                nl = data.index(b"\r\n", p)
                size = int(data[p + 1 : nl])
                p = nl + 2
                if p + size + 2 > end:
                    return
                argv.append(data[p : p + size])
                p += size + 2
        except ValueError:
            if pos == start:
                raise
            return
        pos = p
        yield pos, argv


def last_boundary(data: bytes, limit: int) -> int:
    """The largest command boundary <= `limit` that is not inside a MULTI/EXEC block (Redis writes a script's
    effects as one block, and replays a block all or nothing)."""
    best, in_multi = 0, False
    for after, argv in commands(data):
        if after > limit:
            break
        verb = argv[0].upper()
        in_multi = verb == b"MULTI" or (in_multi and verb != b"EXEC")
        if not in_multi:
            best = after
    return best


def lost_writes(tail: bytes, keys: CrawlKeys) -> LostWrites:
    seen, stats_key = keys.seen.encode(), keys.stats.encode()
    seen_adds = acks = 0
    for _, argv in commands(tail) if tail else ():
        verb = argv[0].upper()
        if verb == b"SADD" and argv[1] == seen:
            seen_adds += len(argv) - 2
        elif verb == b"HINCRBY" and argv[1:3] == [stats_key, b"done"]:
            acks += int(argv[3])
    return LostWrites(len(tail), seen_adds, acks)


def log_messages(log: Path, needle: str) -> list[str]:
    lines = (json.loads(x) for x in log.read_text(errors="replace").splitlines() if x.startswith("{"))
    return [str(o["message"]) for o in lines if needle in str(o.get("message", ""))]


@pytest.fixture
def rollback_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", config=ROLLBACK_REDIS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def crash_and_roll_back(server: RedisServer, keys: CrawlKeys, log: Path, at_once: bool) -> LostWrites:
    """Mark the AOF, let a second of crawling go by, SIGKILL Redis, cut the AOF back to the mark, start it."""
    aof = aof_file(server.dir)
    prefix = aof.read_bytes()  # the file only grows: what is there now stays as it is
    mark, t_mark = last_boundary(prefix, len(prefix)), time.monotonic()
    # the window being emulated is one second of writes, not a wait for the worker: poll until it has passed
    wait_until(lambda: time.monotonic() - t_mark >= ROLLBACK_S, timeout_s=ROLLBACK_S + 1)
    server.stop(signal.SIGKILL)
    data = aof.read_bytes()
    with aof.open("r+b") as f:
        f.truncate(mark)
    if not at_once:  # a crash: Redis stays down until the worker has seen a call fail
        wait_until(lambda: log_messages(log, "Redis unavailable"), timeout_s=20)
    server.start()
    return lost_writes(data[mark:], keys)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A crawl to roll back: the site's size, when the one-second window opens, how Redis comes back."""

    pages: int
    cut_after: int  # records written when the window opens
    at_once: bool  # start Redis again at once (else: once the worker has seen a call fail)
    worker: tuple[str, ...]  # the worker's options beyond worker_args()


# A fast crawl: about a thousand acks in the lost second. Leases rolled back to "leased" come back by reclaim
# within a few seconds; the run_id is checked twice a second.
FAST = ("--concurrency", "16", "--per-host-concurrency", "0", "--lease-ttl-s", "5", "--heartbeat-ttl-s", "1.5")
# A slow, polite crawl (25 pages/s): often only the leaser has a call in flight when Redis dies, and the
# run_id check runs at its default pace (every heartbeat TTL / 3 = 5 s).
QUIET: tuple[str, ...] = ("--concurrency", "4", "--per-host-concurrency", "0", "--per-host-delay", "0.04")
QUIET += ("--lease-ttl-s", "5", "--heartbeat-ttl-s", "15")


def run_rolled_back_crawl(sc: Scenario, server: RedisServer, name: str, tmp_path: Path) -> None:
    """Crawl the site, roll Redis back mid-crawl, and check that every reachable page was recorded anyway."""
    with start_server(SITE_SERVER, "--port", 0, "--pages", sc.pages, "--seed", SEED) as site:
        expected = {dedup_key(u) for u in expected_pages(sc.pages, SEED, site.url)}
        enqueue(server, name, tmp_path, [site.url + "/p/0"])
        out, log = tmp_path / "out", tmp_path / "worker.log"
        w = spawn_crawl(
            [*worker_args(server.url, name, out, "--until-idle", *sc.worker), "--redis-wait", "30"], log=log
        )
        try:
            wait_until(lambda: count_lines(out) >= sc.cut_after or w.poll() is not None, timeout_s=60)
            lost = crash_and_roll_back(server, CrawlKeys(name), log, sc.at_once)
            at_crash = count_lines(out)
            code = w.wait(timeout=90)
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    # the test proves something only if the cut undid acks and link adds of a crawl that was not finished
    assert at_crash < len(expected) and lost.acks > 0 and lost.seen_adds > 0, (at_crash, str(lost))

    got = Counter(dedup_key(r["url"]) for r in read_records(out))
    missing = sorted(expected - set(got))
    assert not missing, f"{len(missing)} reachable pages never recorded ({lost}): {missing[:5]}"
    assert set(got) == expected
    # what the rollback costs instead: work redone (every undone ack's page is fetched and written again)
    assert sum(got.values()) >= len(expected) + lost.acks, (sum(got.values()), len(expected), str(lost))
    s: dict[str, Any] = stats(server.url, name)
    assert s["dead"] == 0, s
    assert s["enqueued"] == s["done"] == len(expected), s
    assert s["queued"] == s["inflight"] == s["deferred"] == 0, s


@pytest.mark.timeout(120)
@pytest.mark.parametrize("at_once", [False, True], ids=["restart-after-outage", "restart-at-once"])
def test_a_redis_rolled_back_by_one_second_loses_no_url(
    at_once: bool, rollback_redis: RedisServer, crawl_name: str, tmp_path: Path
) -> None:
    run_rolled_back_crawl(Scenario(3000, 500, at_once, FAST), rollback_redis, crawl_name, tmp_path)


@pytest.mark.timeout(120)
def test_a_quick_restart_of_a_rolled_back_redis_during_a_polite_crawl_loses_no_url(
    rollback_redis: RedisServer, crawl_name: str, tmp_path: Path
) -> None:
    run_rolled_back_crawl(Scenario(250, 250, True, QUIET), rollback_redis, crawl_name, tmp_path)
