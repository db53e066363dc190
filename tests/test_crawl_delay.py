"""robots.txt Crawl-delay, enforced crawl-wide by the frontier (issue 11), capped by --max-crawl-delay."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from crawler.frontier import now_ms
from crawler.keys import CrawlKeys
from crawler.testing.services import SiteHandler, serve_in_thread
from crawler.urls import crawl_url
from tests.helpers import crawl, enqueue, read_records, worker_args
from tests.test_stages import frontier_at


def test_a_host_delay_spaces_leases_of_that_host_only(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with frontier_at(redis_server.url, crawl_name) as f:
            await f.add([crawl_url(f"http://slow.example/{i}") for i in range(3)])
            await f.add([crawl_url(f"http://fast.example/{i}") for i in range(3)])
            await f.set_host_delay("slow.example", 0.5)
            leases, _ = await f.lease(10, "t.1", 30)
            hosts = sorted(ls.url.split("/")[2] for ls in leases)
            assert hosts == ["fast.example"] * 3 + ["slow.example"]  # one of the delayed host, all of the other
            t0 = now_ms()
            again, next_due = await f.lease(10, "t.1", 30)
            assert again == [] and next_due >= t0 + 400  # the next one of slow.example only after its delay

    asyncio.run(main())


class PoliteSite(SiteHandler):
    """robots.txt asks for a 30 s Crawl-delay; every page is a tiny HTML page."""

    def do_GET(self) -> None:
        if self.path == "/robots.txt":
            body, ctype = b"User-agent: *\nCrawl-delay: 30\nDisallow: /private\n", "text/plain"
        else:
            body, ctype = f"<title>{self.path}</title>".encode(), "text/html"
        self.reply(200, body, ctype)


@pytest.fixture
def polite_site() -> Iterator[str]:
    with serve_in_thread(PoliteSite) as url:
        yield url


@pytest.mark.timeout(120)
def test_crawl_delay_from_robots_is_capped_and_enforced(
    redis_server: Any, crawl_name: str, tmp_path: Path, polite_site: str
) -> None:
    urls = [f"{polite_site}/p/{i}" for i in range(5)]
    enqueue(redis_server, crawl_name, tmp_path, urls)
    out = tmp_path / "out"
    args = worker_args(redis_server.url, crawl_name, out, "--until-idle", "--no-follow", "--max-crawl-delay", "0.3")
    run = crawl([*args, "--per-host-concurrency", "1"])
    assert run.returncode == 0, run.stderr[-2000:]
    records = sorted(read_records(out), key=lambda r: r["fetched_at"])
    assert {r["url"] for r in records} == set(urls)
    host = crawl_url(urls[0]).host
    stored = redis.Redis.from_url(redis_server.url).hget(CrawlKeys(crawl_name).host_delay, host)
    assert stored == b"300"  # Crawl-delay 30 capped at --max-crawl-delay 0.3
    # the first lease goes before robots.txt is known, the second is leased as soon as the first is settled;
    # from the second on, every lease of the host waits the delay
    gaps = [b["fetched_at"] - a["fetched_at"] for a, b in itertools.pairwise(records[1:])]
    assert all(g >= 0.25 for g in gaps), gaps
