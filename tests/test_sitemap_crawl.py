"""Sitemaps as seeds (issue 15): `crawl enqueue --sitemap`, an index of gzip'd sitemaps expanded by the worker
exactly (count and dedup) with bounded memory, cross-host entries refused, robots.txt `Sitemap:` lines followed."""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from crawler.testing.services import SiteHandler, serve_in_thread
from tests.helpers import crawl, read_records, spawn_crawl, stats, worker_args
from tests.test_sitemaps import BILLION_LAUGHS

PER_SITEMAP = 40_000
SITEMAPS = 3


def urlset(base: str, start: int, n: int) -> bytes:
    rows = "".join(
        f"<url><loc>{base}/item/{i}</loc><lastmod>2026-11-{1 + i % 28:02d}</lastmod><priority>0.5</priority></url>"
        for i in range(start, start + n)
    )
    return f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{rows}</urlset>'.encode()


class SitemapSite(SiteHandler):
    external_reads = 0  # requests for /evil.dtd and /evil-entity: an XML parser resolving external references

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        ctype = "application/xml"
        other = base.replace("127.0.0.1", "localhost")  # the same server under another host name
        if self.path == "/robots.txt" and self.headers["Host"].startswith("127.0.0.1"):
            sitemaps = f"Sitemap: {base}/small.xml\nSitemap: {other}/vouched.xml\n"
            body, ctype = f"User-agent: *\nDisallow: /from-robots\n{sitemaps}".encode(), "text/plain"
        elif self.path == "/robots.txt":  # localhost's: read in turn, it would spread the crawl to its sitemap
            body, ctype = f"User-agent: *\nSitemap: {other}/spread.xml\n".encode(), "text/plain"
        elif self.path == "/vouched.xml":  # on localhost, named by 127.0.0.1's robots.txt: speaks for 127.0.0.1
            body = f"<urlset><url><loc>{base}/vouched-page</loc></url><url><loc>{other}/x</loc></url></urlset>".encode()
        elif self.path == "/sitemap_index.xml":
            items = "".join(f"<sitemap><loc>{base}/sitemaps/{i}.xml.gz</loc></sitemap>" for i in range(SITEMAPS))
            body = f"<sitemapindex>{items}</sitemapindex>".encode()
        elif self.path.startswith("/sitemaps/"):
            i = int(self.path.split("/")[-1].split(".")[0])
            # the sitemaps overlap by 100 URLs: dedup must count them once
            body, ctype = gzip.compress(urlset(base, i * (PER_SITEMAP - 100), PER_SITEMAP)), "application/gzip"
        elif self.path == "/big.xml":  # the protocol's 50,000 URLs, 12.7 MB uncompressed: past the 10 MiB page cap
            pad = "x" * 200
            rows = "".join(f"<url><loc>{base}/long/{i}/{pad}</loc></url>" for i in range(50_000))
            body = f"<urlset>{rows}</urlset>".encode()
        elif self.path.startswith("/nest/"):  # indexes nested 0 -> 1 -> 2 -> 3 -> 4; 1 also lists a urlset
            name = self.path.split("/")[-1].split(".")[0]
            if name == "pages":
                body = f"<urlset><url><loc>{base}/leaf/a</loc></url></urlset>".encode()
            elif name == "4":
                body = f"<urlset><url><loc>{base}/leaf/deep</loc></url></urlset>".encode()
            else:
                children = [f"{base}/nest/{int(name) + 1}.xml"] + ([f"{base}/nest/pages.xml"] if name == "1" else [])
                body = ("<sitemapindex>" + "".join(f"<sitemap><loc>{c}</loc></sitemap>" for c in children)).encode()
                body += b"</sitemapindex>"
        elif self.path == "/leaf/a":
            body, ctype = f'<title>a</title><a href="{base}/leaf/a-child">next</a>'.encode(), "text/html"
        elif self.path == "/feed.rss":
            items = "".join(f"<item><link>{base}/news/{i}</link></item>" for i in range(3))
            pub = "<pubDate>Tue, 01 Dec 2026 10:00:00 GMT</pubDate>"
            body = f"<rss><channel><link>{base}/</link>{items}<item><link>{base}/news/3</link>{pub}</item>"
            body, ctype = (body + "</channel></rss>").encode(), "application/rss+xml"
        elif self.path == "/laughs.xml":
            body = BILLION_LAUGHS.replace(b"https://shop.test", base.encode())
        elif self.path == "/xxe.xml":  # an external entity and an external DTD, both on this server
            dtd = f'<!DOCTYPE urlset SYSTEM "{base}/evil.dtd" [<!ENTITY x SYSTEM "{base}/evil-entity">]>'
            body = f"{dtd}<urlset><url><loc>{base}/&x;</loc></url></urlset>".encode()
        elif self.path in ("/evil.dtd", "/evil-entity"):  # fetched by nobody, or the parse read them
            self.__class__.external_reads += 1
            body = b"<!ENTITY y 'z'>"
        elif self.path == "/small.xml":  # one URL of this host, one of another: that one is refused
            body = (
                f"<urlset><url><loc>{base}/from-robots</loc></url>"
                "<url><loc>http://elsewhere.example/x</loc></url></urlset>"
            ).encode()
        else:
            body, ctype = b"<title>page</title>", "text/html"
        self.reply(200, body, ctype)


@pytest.fixture
def site() -> Iterator[str]:
    with serve_in_thread(SitemapSite) as url:
        yield url


@pytest.mark.timeout(180)
def test_an_index_of_gzipd_sitemaps_is_enqueued_exactly_with_bounded_memory(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: str
) -> None:
    index = f"{site}/sitemap_index.xml"
    run = crawl(["enqueue", "--sitemap", index, "--redis", redis_server.url, "--crawl", crawl_name])
    assert run.returncode == 0 and "added=1 " in run.stdout, run.stdout + run.stderr
    out = tmp_path / "out"
    # the index and its three sitemaps, nothing else (--no-follow: sitemaps are seeds, expanded anyway)
    args = worker_args(redis_server.url, crawl_name, out, "--max-pages", "4", "--no-follow", "--no-robots")
    log = tmp_path / "worker.log"
    worker = spawn_crawl([*args, "--concurrency", "4"], log=log)
    tree_peak_mb, parse_peak_mb = peak_rss_mb(worker, timeout_s=150)
    assert worker.returncode == 0, log.read_text()[-3000:]
    distinct = SITEMAPS * PER_SITEMAP - 100 * (SITEMAPS - 1)
    s = stats(redis_server.url, crawl_name)
    assert s["enqueued"] == 1 + SITEMAPS + distinct, s
    records = {r["url"]: r for r in read_records(out)}
    assert records[index]["data"] == {"sitemap": {"urls": 0, "sitemaps": SITEMAPS, "refused": 0, "invalid": 0}}
    for i in range(SITEMAPS):
        assert records[f"{site}/sitemaps/{i}.xml.gz"]["data"]["sitemap"]["urls"] == PER_SITEMAP
    summary = [ln for ln in log.read_text().splitlines() if '"event":"summary"' in ln]
    peak_mb = json.loads(summary[-1])["peak_rss_mb"]
    # the worker process, and its whole tree (parse processes, forkserver) sampled every 20 ms: the parse of a
    # 40,000-URL sitemap holds its result list, not the document
    assert peak_mb < 400, f"worker peak RSS {peak_mb} MB for 120,000 sitemap URLs"
    assert parse_peak_mb < 250, f"a parse process peaked at {parse_peak_mb} MB"
    assert tree_peak_mb < 700, f"the worker's tree peaked at {tree_peak_mb} MB"
    print(f"peak RSS: worker {peak_mb} MB, one parse process {parse_peak_mb:.0f} MB, tree {tree_peak_mb:.0f} MB")


def peak_rss_mb(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[float, float]:
    """(peak RSS of the process and all its descendants together, peak RSS of any one descendant), sampled
    every 20 ms until the process exits; the process is killed if it outlives `timeout_s`."""
    root = psutil.Process(proc.pid)
    tree_peak = child_peak = 0.0
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the worker did not finish within {timeout_s} s")
        try:
            children = root.children(recursive=True)
            sizes = [c.memory_info().rss for c in children]
            tree = root.memory_info().rss + sum(sizes)
        except psutil.Error:  # a process ended between listing and reading: the next sample counts
            continue
        tree_peak = max(tree_peak, tree / 2**20)
        child_peak = max(child_peak, max(sizes, default=0) / 2**20)
        time.sleep(0.02)
    return tree_peak, child_peak


@pytest.mark.parametrize("robots", [True, False], ids=["robots", "no-robots"])
def test_robots_sitemap_lines_are_followed_and_cross_host_entries_refused(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: str, robots: bool
) -> None:
    """The seed is a page robots.txt disallows: its host's Sitemap: lines are followed all the same, and with
    --no-robots too (the flag asks for them; the rules are then not enforced). A sitemap on another host that
    robots.txt names speaks for the seed's host."""
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(f"{site}/from-robots\n")  # a seed robots.txt disallows: its Sitemap: lines are read anyway
    run = crawl(["enqueue", str(seeds), "--redis", redis_server.url, "--crawl", crawl_name])
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    args = worker_args(redis_server.url, crawl_name, out, "--until-idle", "--sitemaps-from-robots", "--no-follow")
    run = crawl([*args, "--allow-private-networks", *([] if robots else ["--no-robots"])])
    assert run.returncode == 0, run.stderr[-3000:]
    urls = {r["url"]: r for r in read_records(out)}
    vouched = site.replace("127.0.0.1", "localhost") + "/vouched.xml"
    assert set(urls) == {f"{site}/small.xml", f"{site}/from-robots", vouched, f"{site}/vouched-page"}
    assert urls[vouched]["data"]["sitemap"] == {"urls": 1, "sitemaps": 0, "refused": 1, "invalid": 0}
    listed = urls[f"{site}/from-robots"]
    assert (listed["error"], listed["status"]) == (("robots_disallowed", None) if robots else (None, 200))
    small = next(r for r in read_records(out) if r["url"].endswith("/small.xml"))
    assert small["data"]["sitemap"]["refused"] == 1


def test_a_sitemap_past_the_page_cap_but_within_the_protocol_s_50_mib_is_expanded_whole(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: str
) -> None:
    url = f"{site}/big.xml"
    run = crawl(["enqueue", "--sitemap", url, "--redis", redis_server.url, "--crawl", crawl_name])
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    args = worker_args(redis_server.url, crawl_name, out, "--max-pages", "1", "--no-follow", "--no-robots")
    run = crawl(args, timeout_s=120)  # the default --max-body-bytes: 10 MiB
    assert run.returncode == 0, run.stderr[-3000:]
    (record,) = read_records(out)
    assert (record["url"], record["error"]) == (url, None)
    assert record["bytes"] > 10 * 1024 * 1024
    assert record["data"]["sitemap"]["urls"] == 50_000
    assert stats(redis_server.url, crawl_name)["enqueued"] == 1 + 50_000


def test_sitemap_urls_are_seeds_at_the_sitemap_s_depth_and_indexes_nest_three_deep(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: str
) -> None:
    """A page listed two indexes down is a seed (depth 0: --max-depth 1 follows its links); an index's child's
    child's child is expanded, the next level is not, and its record says so."""
    run = crawl(["enqueue", "--sitemap", f"{site}/nest/0.xml", "--redis", redis_server.url, "--crawl", crawl_name])
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    run = crawl(worker_args(redis_server.url, crawl_name, out, "--until-idle", "--no-robots", "--max-depth", "1"))
    assert run.returncode == 0, run.stderr[-3000:]
    records = {r["url"].removeprefix(site): r for r in read_records(out)}
    nest = ["/nest/0.xml", "/nest/1.xml", "/nest/2.xml", "/nest/3.xml", "/nest/pages.xml"]
    assert set(records) == {*nest, "/leaf/a", "/leaf/a-child"}
    assert {u: r["depth"] for u, r in records.items()} == {**dict.fromkeys(nest, 0), "/leaf/a": 0, "/leaf/a-child": 1}
    assert [u for u, r in records.items() if r["error"]] == ["/nest/3.xml"]
    deepest = records["/nest/3.xml"]
    assert deepest["error"] == "sitemap_error" and deepest["parser_error_detail"].startswith("nested too deep: 1 ")


def test_billion_laughs_and_xxe_sitemaps_are_refused_in_a_crawl_and_nothing_external_is_read(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: str
) -> None:
    SitemapSite.external_reads = 0
    urls = [f"{site}/laughs.xml", f"{site}/xxe.xml"]
    args = ["enqueue", "--sitemap", urls[0], "--sitemap", urls[1], "--redis", redis_server.url, "--crawl", crawl_name]
    assert crawl(args).returncode == 0
    out = tmp_path / "out"
    run = crawl(worker_args(redis_server.url, crawl_name, out, "--until-idle", "--no-robots"))
    assert run.returncode == 0, run.stderr[-3000:]
    records = {r["url"]: r for r in read_records(out)}
    assert set(records) == set(urls)  # nothing else was enqueued: no entity was expanded
    for url in urls:
        assert records[url]["error"] == "sitemap_error"
        assert records[url]["parser_error_detail"].startswith("entity refused"), records[url]
    assert SitemapSite.external_reads == 0
    assert stats(redis_server.url, crawl_name)["enqueued"] == 2


def test_an_rss_feed_given_as_a_sitemap_is_expanded_with_its_dates(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: str
) -> None:
    url = f"{site}/feed.rss"
    assert crawl(["enqueue", "--sitemap", url, "--redis", redis_server.url, "--crawl", crawl_name]).returncode == 0
    out, parser = tmp_path / "out", tmp_path / "dates.py"
    parser.write_text("def parse(page):\n    return {'url': page.url, 'data': page.data}\n")  # what the page got
    args = worker_args(redis_server.url, crawl_name, out, "--until-idle", "--no-robots", "--no-follow")
    run = crawl([*args, "--parser", f"{parser}:parse"])
    assert run.returncode == 0, run.stderr[-3000:]
    records = {r["url"].removeprefix(site): r for r in read_records(out)}
    assert set(records) == {"/feed.rss", "/news/0", "/news/1", "/news/2", "/news/3"}
    assert records["/feed.rss"]["data"]["sitemap"]["urls"] == 4
    items = [json.loads(line) for f in (out / "items").glob("*.jsonl") for line in f.read_text().splitlines()]
    by_url = {i["url"].removeprefix(site): i["data"] for i in items}
    assert by_url == {"/news/0": {}, "/news/1": {}, "/news/2": {}, "/news/3": {"lastmod": "2026-12-01T10:00:00+00:00"}}
