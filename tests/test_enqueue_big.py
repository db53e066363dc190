"""A file big enough to be parsed in the helper process: counts and line numbers stay exact, and JSON lines keep
their data through the chunks handed between processes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import redis

from crawler.testing.services import RedisServer
from tests.helpers import crawl

LINES = 30_000


def test_big_file_counts_and_line_numbers(redis_server: RedisServer, crawl_name: str, tmp_path: Path) -> None:
    f = tmp_path / "urls.txt"
    bad: list[int] = []
    unique: set[str] = set()
    with_data: dict[str, int] = {}
    with f.open("w") as out:
        for lineno in range(1, LINES + 1):
            if lineno % 997 == 0:
                out.write(f"ftp://bad.example/{lineno}\n")
                bad.append(lineno)
            elif lineno % 1000 == 0:
                url = f"http://j{lineno % 7}.example/json/{lineno}?b=1&a=2"
                priority = "high" if lineno % 3000 == 0 else "normal"
                out.write(json.dumps({"url": url, "data": {"n": lineno}, "priority": priority}) + "\n")
                unique.add(url)
                with_data[url] = lineno
            else:
                url = f"http://h{lineno % 300}.example/p/{lineno % 25_000}"  # some repeat: duplicates
                unique.add(url)
                out.write(url + "\n")
    run = crawl(["enqueue", str(f), "--redis", redis_server.url, "--crawl", crawl_name])
    assert run.returncode == 0, run.stderr
    added, dups, invalid = map(int, re.findall(r"\d+", run.stdout.strip()))
    assert (added, dups, invalid) == (len(unique), LINES - len(bad) - len(unique), len(bad))
    shown = [int(m) for m in re.findall(r":(\d+): invalid URL", run.stderr)]
    assert shown == bad[:20]
    assert f"and {len(bad) - 20} more invalid lines" in run.stderr
    stats = json.loads(crawl(["stats", "--json", "--redis", redis_server.url, "--crawl", crawl_name]).stdout)
    assert stats["queued"] == stats["enqueued"] == len(unique)

    client = redis.Redis.from_url(redis_server.url)
    try:
        stored: dict[str, int] = {}
        for key in client.scan_iter(match=f"crawl:{{{crawl_name}}}:q:j*", count=1000):
            for raw in client.lrange(key, 0, -1):
                text = raw.decode() if isinstance(raw, bytes) else raw
                _depth, _attempts, url, extras = text.split(" ", 3)
                stored[url] = json.loads(extras)["data"]["n"]
    finally:
        client.close()
    assert stored == with_data  # the fetch URL as written (query order kept), its data intact
