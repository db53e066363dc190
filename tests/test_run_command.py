"""`crawl run` on the embedded Redis (the README's main job), --max-pages, --extract, output rotation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.embedded import EmbeddedPaths, stop_embedded_server
from crawler.records import Record
from crawler.sinks import JsonlSink
from crawler.testing.services import RedisServer, RunningServer, start_server
from crawler.testing.site_server import expected_pages
from crawler.urls import dedup_key
from tests.helpers import crawl, read_records, worker_args
from tests.warc_readers import fast_read


@pytest.fixture(scope="module")
def site() -> Iterator[RunningServer]:
    with start_server("crawler.testing.site_server", "--port", 0, "--pages", 150, "--seed", 5) as s:
        yield s


def test_crawl_run_on_the_embedded_redis_and_leaves_no_daemon(tmp_path: Path, site: RunningServer) -> None:
    home = Path("/tmp") / f"crawl-run-{os.getpid()}-{tmp_path.name[-12:]}"  # short: a unix socket path
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(site.url + "/p/0\n")
    try:
        run = crawl(
            [
                "run",
                str(seeds),
                "--home",
                str(home),
                "--output",
                str(tmp_path / "out"),
                "--per-host-concurrency",
                "0",
                "--log-interval",
                "1",
                "--warc",
                str(tmp_path / "warc"),
            ]
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "added=1 duplicates=0 invalid=0" in run.stdout
        records = read_records(tmp_path / "out")
        assert {dedup_key(r["url"]) for r in records} == {dedup_key(u) for u in expected_pages(150, 5, site.url)}
        # `crawl run --warc`: every HTML page's response is in the WARC, read back by the independent reader
        archived = {r.uri for f in (tmp_path / "warc").glob("*.warc.gz") for r in fast_read(f) if r.digests_ok}
        html = {r["final_url"] for r in records if r["content_type"] == "text/html"}
        assert html and html <= archived
        # redis-server deletes its pidfile on a clean shutdown; the log says it shut down
        assert not (home / "redis.pid").exists(), "the embedded Redis outlived the last crawl process"
        assert "ready to exit, bye bye" in (home / "redis.log").read_text()
        # the frontier survived the shutdown (AOF): a new command sees the finished crawl
        stats = crawl(["stats", "--json", "--home", str(home)])
        assert json.loads(stats.stdout)["done"] == len(records)
        assert (home / "crawl.aof").exists()
        assert not EmbeddedPaths(home).socket.exists()
    finally:
        stop_embedded_server(home)


def test_max_pages_and_extraction_rules(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, site: RunningServer
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"heading": "title", "hrefs": {"css": "a", "attr": "href", "all": True}}))
    f = tmp_path / "seeds.txt"
    f.write_text(site.url + "/p/0\n")
    assert crawl(["enqueue", str(f), "--redis", redis_server.url, "--crawl", crawl_name]).returncode == 0
    run = crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            tmp_path / "out",
            "--max-pages",
            "25",
            "--extract",
            str(rules),
            "--concurrency",
            "4",
            "--no-robots",
        )
    )
    assert run.returncode == 0, run.stdout + run.stderr
    records = read_records(tmp_path / "out")
    assert len(records) == 25
    for r in records:
        if r["status"] == 200 and "/p/" in r["url"]:
            assert r["data"]["heading"] == r["title"]
            assert isinstance(r["data"]["hrefs"], list) and r["data"]["hrefs"]
    s = json.loads(crawl(["stats", "--json", "--redis", redis_server.url, "--crawl", crawl_name]).stdout)
    assert s["done"] == 25 and s["inflight"] == 0 and s["queued"] > 0  # the rest waits, nothing lost


def test_sink_rotates_by_size(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, "w1", rotate_bytes=2000)
    rec = Record("http://h/x", "http://h/x", 200, 0, 0.0, 1, 10, "text/html", "t", ["http://h/y"] * 5, None, 1, None)
    for _ in range(40):
        sink.write([rec])
    sink.close()
    files = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert "w1.jsonl" in files and "w1.1.jsonl" in files and len(files) > 2
    one = len(json.dumps(rec.to_dict(), separators=(",", ":"))) + 1  # one record's line
    assert all(p.stat().st_size < 2000 + one for p in tmp_path.glob("*.jsonl"))  # rotated before the next write
    assert len(read_records(tmp_path)) == 40
