"""Frontier benchmark: `crawl enqueue` throughput, lease+ack throughput, and Redis memory per URL.

    python scripts/bench_frontier.py [--urls 1000000] [--hosts 10000] [--consumers 4] [--batch 256]

Starts its own redis-server (the one `crawl` would embed, on a free loopback port, AOF and RDB off: this measures
the frontier, not the disk), writes a file of URLs spread over the hosts in a temporary directory, then

1. times `python -m crawler enqueue FILE --redis URL --crawl bench` (process start included),
2. lets N consumer processes (`tests/frontier_consumer.py`, politeness unlimited, lease a batch then ack the whole
   batch) drain the frontier, timed from the moment they are all released until `done` == URLs,
3. reads Redis `used_memory` before, after the enqueue (per queued URL) and after the crawl (per seen URL: only the
   dedup set and the counters remain).

Prints a Markdown table. Every wait has a deadline; the server and the consumers are stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from crawler.keys import CrawlKeys
from crawler.testing.services import IN_MEMORY, RedisServer, stop_process

REPO = Path(__file__).resolve().parents[1]
CONSUMER = REPO / "tests" / "frontier_consumer.py"
CRAWL = "bench"


def write_urls(path: Path, n: int, hosts: int) -> None:
    with open(path, "w", encoding="ascii", buffering=1 << 20) as f:
        chunk: list[str] = []
        for i in range(n):
            chunk.append(f"http://host{i % hosts}.bench.example/articles/{i}?page={i % 97}\n")
            if len(chunk) >= 10_000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def enqueue(src: Path, url: str, timeout_s: float, cwd: Path) -> tuple[float, str]:
    """`crawl enqueue` through the real CLI; returns (seconds, its summary line)."""
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "crawler", "enqueue", str(src), "--redis", url, "--crawl", CRAWL],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
    )
    enqueue_s = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"enqueue failed ({r.returncode}): {r.stderr[-500:]}")
    return enqueue_s, r.stdout.strip()


def start_consumers(args: argparse.Namespace, url: str) -> list[subprocess.Popen[bytes]]:
    """N consumer processes, each waiting at the barrier for the go signal."""
    cmd = [sys.executable, str(CONSUMER), "--redis", url, "--crawl", CRAWL, "--batch", str(args.batch)]
    cmd += ["--ttl", "120", "--barrier", "--deadline-s", str(args.timeout_s)]
    return [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(args.consumers)
    ]


def drain(client: redis.Redis, consumers: list[subprocess.Popen[bytes]], n: int, timeout_s: float) -> float:
    """Release the consumers together and time them until `done` == n; returns seconds."""
    keys = CrawlKeys(CRAWL)
    for _ in consumers:
        if client.blpop([keys.prefix + "test_ready"], timeout=60) is None:
            raise SystemExit("consumers did not start within 60 s")
    t = time.perf_counter()
    client.rpush(keys.prefix + "test_go", *range(len(consumers)))
    deadline = time.monotonic() + timeout_s
    while int(client.hget(keys.stats, "done") or 0) < n:
        if time.monotonic() > deadline or any(c.poll() not in (None, 0) for c in consumers):
            errs = [c.stderr.read().decode()[-300:] for c in consumers if c.poll() not in (None, 0) and c.stderr]
            raise SystemExit(f"crawl did not finish: {client.hgetall(keys.stats)} {errs}")
        time.sleep(0.01)
    crawl_s = time.perf_counter() - t
    for c in consumers:
        c.wait(timeout=60)
    bad = [c.returncode for c in consumers if c.returncode != 0]
    if bad:
        raise SystemExit(f"consumers exited with {bad}")
    return crawl_s


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--urls", type=int, default=1_000_000)
    p.add_argument("--hosts", type=int, default=10_000)
    p.add_argument("--consumers", type=int, default=4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--timeout-s", type=float, default=900, help="deadline of each phase")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    command = shlex.join(["python", "scripts/bench_frontier.py", *sys.argv[1:]])

    tmp = Path(tempfile.mkdtemp(prefix="bench-frontier-"))
    server = RedisServer(tmp / "redis", config=IN_MEMORY)
    server.start()
    url = server.url
    consumers: list[subprocess.Popen[bytes]] = []
    client = redis.Redis.from_url(url)
    keys = CrawlKeys(CRAWL)
    try:
        version = client.info("server")["redis_version"]
        src = tmp / "urls.txt"
        t = time.perf_counter()
        write_urls(src, args.urls, args.hosts)
        gen_s = time.perf_counter() - t
        mem0 = used_memory(client)

        # 1. enqueue through the real CLI
        enqueue_s, summary = enqueue(src, url, args.timeout_s, tmp)
        queued = int(client.hget(keys.stats, "queued") or 0)
        if queued != args.urls:
            raise SystemExit(f"expected {args.urls} queued, got {queued} ({summary})")
        mem_queued = used_memory(client)

        # 2. drain with N consumer processes, released together
        consumers = start_consumers(args, url)
        crawl_s = drain(client, consumers, args.urls, args.timeout_s)

        stats = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in client.hgetall(keys.stats).items()}
        seen = int(client.scard(keys.seen))
        mem_done = used_memory(client)
        seen_bytes = int(client.memory_usage(keys.seen) or 0)
        names = (k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(match=keys.pattern, count=10_000))
        left = sorted({name.split(":")[2] for name in names})

        n = args.urls
        rows = [
            ("URLs / hosts", f"{n:,} / {args.hosts:,} (file written in {gen_s:.1f} s)"),
            (
                "`crawl enqueue` (CLI, process start included)",
                f"{enqueue_s:.1f} s, **{n / enqueue_s:,.0f} URLs/s** ({summary})",
            ),
            (
                f"lease+ack, {args.consumers} consumer processes, batch {args.batch}, politeness unlimited",
                f"{crawl_s:.1f} s, **{n / crawl_s:,.0f} URLs/s** "
                f"(done={stats.get('done')}, dead={stats.get('dead', 0)})",
            ),
            (
                "Redis used_memory per queued URL (after enqueue)",
                f"{(mem_queued - mem0) / n:.0f} B ({(mem_queued - mem0) / 2**20:.0f} MiB)",
            ),
            (
                "Redis used_memory per seen URL (after the crawl)",
                f"{(mem_done - mem0) / seen:.0f} B ({(mem_done - mem0) / 2**20:.0f} MiB)",
            ),
            ("`MEMORY USAGE` of the seen set per URL", f"{seen_bytes / seen:.0f} B"),
            ("keys left after the crawl", ", ".join(left)),
            ("redis-server", f"{version}, AOF and RDB off; {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}"),
        ]
        print(f"`{command}`\n")
        print("| measure | result |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        return 0
    finally:
        for c in consumers:
            stop_process(c, timeout_s=5)
            if c.stderr:
                c.stderr.close()
        client.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
