"""--proxy-max-connections is a cap for the whole fleet: 3 workers with a cap of 4 never hold more than 4
connections through the gateway at once (measured by the gateway itself), and nothing is lost."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.testing.services import RedisServer, RunningServer, start_server
from tests.helpers import PROXY_PASSWORD, PROXY_USER, crawl, read_records, spawn_crawl, stats, worker_args

URLS = 90


@pytest.fixture(scope="module")
def slow_site() -> Iterator[RunningServer]:
    with start_server("crawler.testing.hostile_server", "--port", 0) as h:
        yield h


def crawl_with_three_workers(
    redis: RedisServer, name: str, tmp_path: Path, site: RunningServer, *cap: str
) -> tuple[dict[str, int], list[dict[str, object]]]:
    with start_server(
        "crawler.testing.proxy_server", "--port", 0, "--user", PROXY_USER, "--password", PROXY_PASSWORD
    ) as proxy:
        gateway = proxy.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("".join(f"{site.url}/slow/150?n={i}\n" for i in range(URLS)))
        assert crawl(["enqueue", str(seeds), "--redis", redis.url, "--crawl", name]).returncode == 0
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for i in range(3):
                procs.append(
                    spawn_crawl(
                        worker_args(
                            redis.url,
                            name,
                            tmp_path / "out",
                            "--until-idle",
                            "--no-robots",
                            "--concurrency",
                            "8",
                            "--per-host-concurrency",
                            "0",
                            "--proxy",
                            gateway,
                            "--worker-id",
                            f"w{i}",
                            *cap,
                        ),
                        log=tmp_path / f"w{i}.log",
                    )
                )
            for p in procs:
                assert p.wait(timeout=120) == 0, (tmp_path / "w0.log").read_text()[-3000:]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        return proxy.stats(), read_records(tmp_path / "out")


def test_three_workers_never_exceed_a_fleet_cap_of_four(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, slow_site: RunningServer
) -> None:
    gateway_stats, records = crawl_with_three_workers(
        redis_server, crawl_name, tmp_path, slow_site, "--proxy-max-connections", "4"
    )
    assert len({r["url"] for r in records}) == URLS and all(r["status"] == 200 for r in records)
    assert stats(redis_server.url, crawl_name)["done"] == URLS
    # the stats request itself is one client connection, after the crawl: it cannot raise the peak above 4
    assert 2 <= gateway_stats["peak_client_connections"] <= 4, gateway_stats


def test_without_the_cap_the_same_fleet_opens_more(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, slow_site: RunningServer
) -> None:
    """The control: the cap, not the workload, is what kept the first test at 4."""
    gateway_stats, records = crawl_with_three_workers(redis_server, crawl_name, tmp_path, slow_site)
    assert len({r["url"] for r in records}) == URLS
    assert gateway_stats["peak_client_connections"] > 4, gateway_stats
