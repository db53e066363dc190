"""The frontier's guarantees across real processes: exclusivity, recovery after SIGKILL, crawl-wide politeness.

Consumers are `tests/frontier_consumer.py` subprocesses against the session's real Redis. Each records every URL
it leased (with the frontier's lease time and wall-clock lease/ack times) to a JSON-lines file; the assertions are
made on those records and on Redis. Processes are started together through a Redis barrier, waited for with a
deadline, and stopped by PID whatever happens.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from crawler.frontier import Counters, Frontier
from crawler.urls import NormalizedURL, normalize

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

CONSUMER = Path(__file__).with_name("frontier_consumer.py")
REPO_ROOT = Path(__file__).resolve().parents[1]


def seed_urls(n_hosts: int, per_host: int) -> list[NormalizedURL]:
    return [normalize(f"http://h{h}.example/page/{i}") for h in range(n_hosts) for i in range(per_host)]


class Consumers:
    """Consumer subprocesses of one test; every one is SIGKILLed by PID on exit if still running."""

    def __init__(self, redis_url: str, crawl: str, tmp: Path) -> None:
        self.redis_url, self.crawl, self.tmp = redis_url, crawl, tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outs: list[Path] = []
        self.errs: list[Path] = []

    def start(self, *args: str, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        i = len(self.procs)
        out, err, log = self.tmp / f"c{i}.jsonl", self.tmp / f"c{i}.err", self.tmp / f"c{i}.log"
        cmd = [
            sys.executable,
            str(CONSUMER),
            "--redis",
            self.redis_url,
            "--crawl",
            self.crawl,
            "--out",
            str(out),
            *args,
        ]
        with open(err, "wb") as err_f, open(log, "wb") as log_f:
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE if stdout_pipe else log_f, stderr=err_f, bufsize=0
            )
        self.procs.append(proc)
        self.outs.append(out)
        self.errs.append(err)
        return proc

    def stderr(self) -> str:
        return "\n".join(
            f"[c{i}] {p.read_text(errors='replace')[-2000:]}" for i, p in enumerate(self.errs) if p.exists()
        )

    def records(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for path in self.outs:
            if path.exists():
                rows += [json.loads(line) for line in path.read_text().splitlines() if line]
        return rows

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            self.kill(proc)
            if proc.stdout is not None:
                proc.stdout.close()

    async def wait_all(self, timeout_s: float, on_tick: Callable[[], Any] | None = None) -> list[int]:
        """Wait for every consumer to exit; `on_tick` (a coroutine function) runs between polls."""
        give_up = time.monotonic() + timeout_s
        while any(p.poll() is None for p in self.procs):
            if time.monotonic() > give_up:
                raise AssertionError(f"consumers still running after {timeout_s}s\n{self.stderr()}")
            if on_tick is not None:
                await on_tick()
            await asyncio.sleep(0.002 if on_tick is not None else 0.02)
        return [int(p.returncode) for p in self.procs]


@pytest.fixture
def consumers(redis_server: Any, crawl_name: str, tmp_path: Path) -> Iterator[Consumers]:
    c = Consumers(redis_server.url, crawl_name, tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


async def release_barrier(f: Frontier, n: int, timeout_s: float = 30.0) -> None:
    """Wait until `n` consumers are connected and waiting, then let them all go at once."""
    give_up = time.monotonic() + timeout_s
    for _ in range(n):
        left = give_up - time.monotonic()
        assert left > 0, "consumers did not reach the barrier"
        assert await f.redis.blpop([f.keys.prefix + "test_ready"], timeout=max(1, int(left))) is not None
    await f.redis.rpush(f.keys.prefix + "test_go", *range(n))


def read_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """One line of a consumer's stdout, or AssertionError when none comes within the deadline."""
    assert proc.stdout is not None
    buf = b""
    give_up = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = give_up - time.monotonic()
            assert left > 0, f"no line from pid {proc.pid} within {timeout_s}s (got {buf!r})"
            if sel.select(left):
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, f"pid {proc.pid} closed stdout (exit {proc.poll()})"
                buf += chunk
    return buf.split(b"\n", 1)[0].decode()


async def final_counters(f: Frontier, total: int) -> Counters:
    c = await f.counters()
    assert c.consistent, c
    assert (c.enqueued, c.done, c.dead, c.queued, c.deferred, c.inflight) == (total, total, 0, 0, 0, 0), c
    assert await f.redis.zcard(f.keys.leases) == 0
    assert await f.redis.hgetall(f.keys.host_inflight) == {}
    return c


def test_every_url_leased_exactly_once(redis_server: Any, crawl_name: str, consumers: Consumers) -> None:
    """8 consumer processes, 2,000 URLs over 50 hosts, politeness unlimited."""
    seeds = seed_urls(50, 40)
    n_consumers = 8

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        f = Frontier(client, crawl_name)
        try:
            assert await f.add(seeds) == 2000
            for _ in range(n_consumers):
                consumers.start("--batch", "16", "--ttl", "30", "--barrier", "--deadline-s", "60")
            await release_barrier(f, n_consumers)
            codes = await consumers.wait_all(60)
            assert codes == [0] * n_consumers, consumers.stderr()
            await final_counters(f, 2000)
        finally:
            await f.purge()
            await client.aclose()

    asyncio.run(main())
    rows = consumers.records()
    counts = Counter(r["url"] for r in rows)
    assert set(counts) == {n.url for n in seeds}
    assert [u for u, k in counts.items() if k != 1] == []  # every URL leased exactly once overall
    assert all(r["acked"] == r["asked"] for r in rows)  # and every ack counted in full
    assert len({r["token"] for r in rows}) >= 2, "the work was not shared between processes"


def test_sigkilled_consumer_leases_are_recovered(redis_server: Any, crawl_name: str, consumers: Consumers) -> None:
    """A consumer holding a batch (ttl 1 s) is SIGKILLed; another one reclaims and finishes; nothing is lost."""
    seeds = seed_urls(6, 50)
    total = len(seeds)

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        f = Frontier(client, crawl_name)
        try:
            assert await f.add(seeds) == total
            holder = consumers.start(
                "--mode", "hold", "--batch", "50", "--ttl", "1", "--deadline-s", "60", stdout_pipe=True
            )
            assert read_line(holder, 20) == "HELD 50", consumers.stderr()
            c = await f.counters()
            assert (c.inflight, c.queued) == (50, total - 50), c
            consumers.kill(holder)  # SIGKILL by PID: no release, no ack
            assert holder.returncode == -signal.SIGKILL
            consumers.start("--batch", "32", "--ttl", "30", "--reclaim-attempts", "3", "--deadline-s", "60")
            codes = await consumers.wait_all(60)
            assert codes == [-signal.SIGKILL, 0], consumers.stderr()
            c = await final_counters(f, total)
            assert c.retried == 50, c
        finally:
            await f.purge()
            await client.aclose()

    asyncio.run(main())
    held = [json.loads(line) for line in consumers.outs[0].read_text().splitlines()]
    finisher = [json.loads(line) for line in consumers.outs[1].read_text().splitlines()]
    held_urls = {r["url"] for r in held}
    assert len(held_urls) == 50
    counts = Counter(r["url"] for r in finisher)
    assert set(counts) == {n.url for n in seeds}  # no URL lost
    assert set(counts.values()) == {1}  # each done once
    assert all(r["acked"] == r["asked"] for r in finisher)
    for r in finisher:
        assert r["attempts"] == (1 if r["url"] in held_urls else 0), r


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at once (an interval ending exactly when another starts does not overlap it)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_per_host_concurrency_holds_across_processes(redis_server: Any, crawl_name: str, consumers: Consumers) -> None:
    """4 consumers, 10 hosts, per_host_concurrency=2, each lease held 5-30 ms before its ack."""
    seeds = seed_urls(10, 60)
    phc, n_consumers = 2, 4
    sampled: list[dict[bytes, bytes]] = []

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        f = Frontier(client, crawl_name)

        async def sample() -> None:
            snapshot = await client.hgetall(f.keys.host_inflight)
            sampled.append(snapshot)
            assert all(int(v) <= phc for v in snapshot.values()), snapshot

        try:
            assert await f.add(seeds) == len(seeds)
            for _ in range(n_consumers):
                consumers.start(
                    "--batch",
                    "8",
                    "--ttl",
                    "30",
                    "--phc",
                    str(phc),
                    "--hold-ms",
                    "5",
                    "30",
                    "--barrier",
                    "--deadline-s",
                    "60",
                )
            await release_barrier(f, n_consumers)
            codes = await consumers.wait_all(60, on_tick=sample)
            assert codes == [0] * n_consumers, consumers.stderr()
            await final_counters(f, len(seeds))
        finally:
            await f.purge()
            await client.aclose()

    asyncio.run(main())
    busy = [s for s in sampled if s]
    assert len(busy) >= 10, f"only {len(busy)} samples saw leases in flight"
    assert max(int(v) for s in busy for v in s.values()) == phc  # the limit was reached, never passed

    rows = consumers.records()
    assert Counter(r["url"] for r in rows) == Counter({n.url: 1 for n in seeds})
    per_host: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        assert r["acked"] == 1, r
        # [returned from lease, about to ack] lies inside the interval the frontier counted the lease in flight
        per_host[r["url"].split("/")[2]].append((r["t_got"], r["t_ack"]))
    peaks = {host: _max_overlap(iv) for host, iv in per_host.items()}
    assert max(peaks.values()) <= phc, peaks
    assert max(peaks.values()) == phc, peaks  # the reconstruction does see concurrent leases of one host


def test_per_host_delay_holds_across_processes(redis_server: Any, crawl_name: str, consumers: Consumers) -> None:
    """3 consumers, 2 hosts, 100 ms between two leases of one host, crawl-wide."""
    seeds = seed_urls(2, 8)
    delay_ms, n_consumers = 100, 3

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        f = Frontier(client, crawl_name)
        try:
            assert await f.add(seeds) == len(seeds)
            for _ in range(n_consumers):
                consumers.start(
                    "--batch", "4", "--ttl", "30", "--delay-ms", str(delay_ms), "--barrier", "--deadline-s", "60"
                )
            await release_barrier(f, n_consumers)
            codes = await consumers.wait_all(60)
            assert codes == [0] * n_consumers, consumers.stderr()
            await final_counters(f, len(seeds))
        finally:
            await f.purge()
            await client.aclose()

    asyncio.run(main())
    rows = consumers.records()
    assert Counter(r["url"] for r in rows) == Counter({n.url: 1 for n in seeds})
    per_host: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per_host[r["url"].split("/")[2]].append(r)
    assert len(per_host) == 2
    assert len({r["token"] for r in rows}) >= 2, "one process did all the leasing: nothing crawl-wide was tested"
    for host, leases in per_host.items():
        leases.sort(key=lambda r: r["lease_now"])
        times = [r["lease_now"] for r in leases]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= delay_ms - 1, (host, gaps)  # allow 1 ms of rounding
        # the wall clock agrees: the host's last lease returned at least 7 delays after its first was asked for
        assert leases[-1]["t_got"] - leases[0]["t_call"] >= 7 * delay_ms - 1, host
