"""End-to-end: the real `crawl worker` against a real Redis, a real authenticating proxy, real sites."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crawler.testing.services import RedisServer, RunningServer, start_server, wait_until
from crawler.testing.site_server import expected_pages
from crawler.urls import dedup_key
from tests.helpers import (
    PROXY_PASSWORD,
    PROXY_USER,
    count_lines,
    crawl,
    enqueue,
    read_records,
    spawn_crawl,
    stats,
    worker_args,
)
from tests.warc_readers import fast_read

PAGES = 400
SEED = 7


@pytest.fixture(scope="module")
def proxy() -> Iterator[RunningServer]:
    with start_server(
        "crawler.testing.proxy_server", "--port", 0, "--user", PROXY_USER, "--password", PROXY_PASSWORD
    ) as p:
        yield p


def proxy_url(p: RunningServer) -> str:
    return p.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")


@pytest.fixture(scope="module")
def site() -> Iterator[RunningServer]:
    with start_server(
        "crawler.testing.site_server", "--port", 0, "--pages", PAGES, "--seed", SEED, "--disallow", "/private/"
    ) as s:
        yield s


@pytest.fixture(scope="module")
def hostile() -> Iterator[RunningServer]:
    with start_server("crawler.testing.hostile_server", "--port", 0) as h:
        yield h


def test_crawl_through_authenticating_proxy_finds_exactly_the_reachable_pages(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, site: RunningServer, proxy: RunningServer
) -> None:
    enqueue(redis_server, crawl_name, tmp_path, [site.url + "/p/0"])
    out = tmp_path / "out"
    before = proxy.stats()["requests"]
    run = crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            out,
            "--until-idle",
            "--concurrency",
            "16",
            "--proxy",
            proxy_url(proxy),
            "--per-host-concurrency",
            "0",
        )
    )
    assert run.returncode == 0, run.stdout + run.stderr
    records = read_records(out)
    # records carry the URL as the page wrote it; the site's own list is in canonical order: compare dedup keys
    expected = keyed(expected_pages(PAGES, SEED, site.url, disallow=["/private/"]))
    fetched = [r for r in records if r["error"] != "robots_disallowed"]
    by_url = Counter(dedup_key(r["url"]) for r in fetched)
    assert set(by_url) == set(expected)
    assert max(by_url.values()) == 1, "a page was fetched twice"
    for r in fetched:
        title, status, depth = expected[dedup_key(r["url"])]
        assert r["status"] == status, r
        assert r["title"] == title, r
        assert r["depth"] >= depth  # concurrent discovery can only find a longer path first
        assert r["proxy"] == proxy.url.replace("http://", f"http://{PROXY_USER}:***@")
    assert proxy.stats()["requests"] - before >= len(expected)
    # robots: the disallowed pages were recorded, never requested
    private = [r for r in records if r["error"] == "robots_disallowed"]
    assert private and all("/private/" in r["url"] for r in private)
    assert site.stats()["by_path_prefix"].get("/private", 0) == 0
    s = stats(redis_server.url, crawl_name)
    assert s["done"] == s["enqueued"] == len(records)
    assert s["queued"] == s["inflight"] == s["deferred"] == s["dead"] == 0
    # the password never reached the output or the logs
    assert PROXY_PASSWORD not in run.stdout + run.stderr
    assert all(PROXY_PASSWORD not in f.read_text() for f in out.glob("*.jsonl"))


def test_sequential_crawl_records_breadth_first_depths(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path
) -> None:
    with start_server("crawler.testing.site_server", "--port", 0, "--pages", PAGES, "--seed", SEED) as site:
        enqueue(redis_server, crawl_name, tmp_path, [site.url + "/p/0"])
        out = tmp_path / "out"
        run = crawl(
            worker_args(redis_server.url, crawl_name, out, "--until-idle", "--concurrency", "1", "--max-depth", "3")
        )
        assert run.returncode == 0, run.stdout + run.stderr
        expected = {u: v for u, v in keyed(expected_pages(PAGES, SEED, site.url)).items() if v[2] <= 3}
    got = {dedup_key(r["url"]): r["depth"] for r in read_records(out)}
    assert got == {u: v[2] for u, v in expected.items()}


def test_https_through_connect(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, proxy: RunningServer
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    with start_server(
        "crawler.testing.site_server",
        "--port",
        0,
        "--pages",
        30,
        "--seed",
        3,
        "--tls-cert",
        cert_pem,
        "--tls-key",
        key_pem,
    ) as tls_site:
        assert tls_site.url.startswith("https://")
        enqueue(redis_server, crawl_name, tmp_path, [tls_site.url + "/p/0"])
        out = tmp_path / "out"
        before = proxy.stats()["connects"]
        run = crawl(
            worker_args(redis_server.url, crawl_name, out, "--until-idle", "--proxy", proxy_url(proxy)),
            env={"SSL_CERT_FILE": str(ca_pem)},
        )
        assert run.returncode == 0, run.stdout + run.stderr
        expected = keyed(expected_pages(30, 3, tls_site.url))
        records = read_records(out)
        assert {dedup_key(r["url"]) for r in records} == set(expected)
        assert all(r["status"] == expected[dedup_key(r["url"])][1] for r in records)
        assert proxy.stats()["connects"] > before


def test_retries_end_done_with_their_attempts(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer, proxy: RunningServer
) -> None:
    h = hostile.url
    urls = {
        f"{h}/flaky/429/1/{crawl_name}": 2,  # deferred through Redis, honouring Retry-After
        f"{h}/flaky/503/2/{crawl_name}": 3,  # retried now, in process
        f"{h}/flaky/reset/{crawl_name}": 2,  # connection reset mid-body
    }
    enqueue(redis_server, crawl_name, tmp_path, list(urls))
    out = tmp_path / "out"
    run = crawl(
        worker_args(redis_server.url, crawl_name, out, "--until-idle", "--no-robots", "--proxy", proxy_url(proxy))
    )
    assert run.returncode == 0, run.stdout + run.stderr
    records = {r["url"]: r for r in read_records(out)}
    assert set(records) == set(urls)
    for url, attempts in urls.items():
        assert records[url]["status"] == 200, records[url]
        assert records[url]["attempts"] == attempts, records[url]
    s = stats(redis_server.url, crawl_name)
    assert s["done"] == 3 and s["dead"] == 0 and s["retried"] >= 1


def test_body_cap_and_compression_bomb_are_errors_with_bounded_memory(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    h = hostile.url
    urls = [f"{h}/big/50", f"{h}/big-chunked/50", f"{h}/bomb/gzip/1000", f"{h}/bomb/br/1000", f"{h}/bomb/deflate/1000"]
    enqueue(redis_server, crawl_name, tmp_path, urls)
    out = tmp_path / "out"
    run = crawl(
        worker_args(
            redis_server.url, crawl_name, out, "--until-idle", "--no-robots", "--max-body-bytes", str(2 * 1024 * 1024)
        )
    )
    assert run.returncode == 0, run.stdout + run.stderr
    records = {r["url"]: r for r in read_records(out)}
    assert set(records) == set(urls)
    assert all(r["error"] == "body_too_large" for r in records.values()), records
    # 50 MiB bodies and 1 GB bombs, and the worker never held more than a few caps' worth
    assert run.summary()["peak_rss_mb"] < 200


def test_slow_drip_is_stopped_by_the_total_timeout(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    url = f"{hostile.url}/drip/60"
    enqueue(redis_server, crawl_name, tmp_path, [url])
    run = crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            tmp_path / "out",
            "--until-idle",
            "--no-robots",
            "--timeout",
            "2",
            "--retries",
            "0",
        ),
        timeout_s=40,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    dead = crawl(["dead", "--json", "--redis", redis_server.url, "--crawl", crawl_name])
    assert '"kind": "timeout"' in dead.stdout and url in dead.stdout
    assert run.summary()["elapsed_s"] < 20


def test_sigkill_one_worker_and_another_finishes_with_nothing_lost(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    urls = [f"{hostile.url}/slow/100?n={i}" for i in range(300)]
    enqueue(redis_server, crawl_name, tmp_path, urls)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    a = spawn_crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            out_a,
            "--concurrency",
            "8",
            "--no-robots",
            "--lease-ttl-s",
            "2",
            "--per-host-concurrency",
            "0",
            "--warc",
            str(tmp_path / "warc"),
        ),
        log=tmp_path / "a.log",
    )
    try:
        wait_until(lambda: count_lines(out_a) >= 30, timeout_s=60)
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
    finally:
        if a.poll() is None:
            a.kill()
    held = stats(redis_server.url, crawl_name)["inflight"]
    assert held > 0, "the killed worker held no leases: the test proves nothing"
    run = crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            out_b,
            "--until-idle",
            "--concurrency",
            "32",
            "--no-robots",
            "--lease-ttl-s",
            "2",
            "--per-host-concurrency",
            "0",
            "--warc",
            str(tmp_path / "warc"),
        )
    )
    assert run.returncode == 0, run.stdout + run.stderr
    got = Counter(r["url"] for r in read_records(out_a) + read_records(out_b))
    assert set(got) == set(urls)
    # the killed worker's WARC reads to its last complete record (only a last one may be cut), the second
    # worker writes its own file (never appends to the cut one), and every URL is archived at least once
    files = sorted((tmp_path / "warc").glob("*.warc.gz"))
    assert len(files) == 2
    archived = set()
    for f in files:
        read = fast_read(f)
        assert read[0].type == "warcinfo" and all(r.digests_ok for r in read[:-1])
        archived |= {r.uri for r in read if r.digests_ok and r.type.endswith("response")}
    assert archived == set(urls)
    s = stats(redis_server.url, crawl_name)
    assert s["done"] == 300 and s["dead"] == 0 and s["inflight"] == 0 and s["queued"] == 0


def test_sigterm_finishes_in_flight_work_and_hands_back_the_rest(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    urls = [f"{hostile.url}/slow/200?n={i}" for i in range(400)]
    enqueue(redis_server, crawl_name, tmp_path, urls)
    out = tmp_path / "out"
    w = spawn_crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            out,
            "--concurrency",
            "16",
            "--no-robots",
            "--lease-ttl-s",
            "60",
            "--per-host-concurrency",
            "0",
        ),
        log=tmp_path / "w.log",
    )
    try:
        wait_until(lambda: count_lines(out) >= 20, timeout_s=60)
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=30) == 0, (tmp_path / "w.log").read_text()
    finally:
        if w.poll() is None:
            w.kill()
    s = stats(redis_server.url, crawl_name)
    assert s["inflight"] == 0, "leases were left to expire instead of being handed back"
    first = read_records(out)
    assert s["done"] == len(first) and s["queued"] == 400 - len(first)
    # a second worker picks up exactly the rest, at once (lease ttl is 60 s: no waiting for expiry)
    run = crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            tmp_path / "out2",
            "--until-idle",
            "--concurrency",
            "64",
            "--no-robots",
            "--per-host-concurrency",
            "0",
        ),
        timeout_s=50,
    )
    assert run.returncode == 0
    got = Counter(r["url"] for r in first + read_records(tmp_path / "out2"))
    final = stats(redis_server.url, crawl_name)
    assert set(urls) - set(got) == set() and set(got) - set(urls) == set(), (
        final,
        crawl(["dead", "--json", "--redis", redis_server.url, "--crawl", crawl_name]).stdout,
    )
    assert [u for u, n in got.items() if n > 1] == []


def test_event_loop_stays_responsive_while_parsing_1mb_pages(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    urls = [f"{hostile.url}/big-page/1024?n={i}" for i in range(60)]
    enqueue(redis_server, crawl_name, tmp_path, urls)
    run = crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            tmp_path / "out",
            "--until-idle",
            "--no-robots",
            "--no-follow",
            "--concurrency",
            "16",
            "--per-host-concurrency",
            "0",
        )
    )
    assert run.returncode == 0, run.stdout + run.stderr
    records = read_records(tmp_path / "out")
    assert len(records) == 60 and all(r["status"] == 200 and r["bytes"] >= 1024 * 1024 for r in records)
    lag = run.summary()["loop_lag_p99_ms"]
    assert lag is not None and lag < 100, lag


def test_gateway_407_never_marks_done_and_stops_the_worker(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, site: RunningServer, proxy: RunningServer
) -> None:
    enqueue(redis_server, crawl_name, tmp_path, [site.url + f"/p/{i}" for i in range(20)])
    bad = proxy.url.replace("http://", f"http://{PROXY_USER}:wrong-password@")
    run = crawl(
        worker_args(redis_server.url, crawl_name, tmp_path / "out", "--until-idle", "--no-robots", "--proxy", bad),
        timeout_s=60,
    )
    assert run.returncode == 3
    assert "407" in run.stdout + run.stderr
    assert "wrong-password" not in run.stdout + run.stderr
    s = stats(redis_server.url, crawl_name)
    assert s["done"] == 0 and s["dead"] == 0 and s["inflight"] == 0 and s["queued"] == 20
    assert not read_records(tmp_path / "out")


def keyed(pages: dict[str, Any]) -> dict[str, Any]:
    """The site's expected pages by dedup key (how the crawl counts a URL once, whatever its spelling)."""
    return {dedup_key(u): v for u, v in pages.items()}
