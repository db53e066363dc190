"""A file big enough to be normalised in the helper process: counts and line numbers stay exact."""

from __future__ import annotations

import json
import re
from pathlib import Path

from crawler.testing.services import RedisServer
from tests.helpers import crawl

LINES = 30_000


def test_big_file_counts_and_line_numbers(redis_server: RedisServer, crawl_name: str, tmp_path: Path) -> None:
    f = tmp_path / "urls.txt"
    bad: list[int] = []
    unique: set[str] = set()
    with f.open("w") as out:
        for lineno in range(1, LINES + 1):
            if lineno % 997 == 0:
                out.write(f"ftp://bad.example/{lineno}\n")
                bad.append(lineno)
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
