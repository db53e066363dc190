"""End-to-end: the real `crawl worker` requests what the page wrote and checks robots.txt against that.

A small site (a real HTTP server on 127.0.0.1, in a thread of this process) records every request target
exactly as it arrives. Its home page links query URLs in a non-sorted order, the same URL again with its
parameters reordered, hrefs wrapped over lines or written with backslashes, and malformed hrefs. Its robots.txt
disallows a prefix written in the original parameter order. The crawl must send the exact request lines a browser
would, fetch the reordered duplicate once (the dedup key), never fetch the disallowed URL, and still record the page
with its links despite the malformed ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from crawler.testing.services import RedisServer
from tests.helpers import crawl, enqueue, read_records, worker_args

pytestmark = pytest.mark.timeout(120)

HOME = b"""<!DOCTYPE html><html><head><title>Home</title></head><body>
<a href="/list?s=shoes&amp;paged=2">shoes, page 2</a>
<a href="/list?paged=2&amp;s=shoes">the same, reordered</a>
<a href="/?s=a&amp;p=2">search (disallowed)</a>
<a href="/wrapped
/over/lines">wrapped</a>
<a href="/back\\slash">backslash</a>
<a href="HTTP://[oops">bad</a> <a href="FTP://[x">bad</a> <a href="file://[example]/">bad</a>
<a href="http://[::1">bad</a> <a href="https://a b/">bad</a>
</body></html>"""
ROBOTS = b"User-agent: *\nDisallow: /?s=\n"
LEAF = b"<!DOCTYPE html><html><head><title>Leaf</title></head><body>no links</body></html>"


class Site(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.targets: list[str] = []  # request targets exactly as sent, in arrival order
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Site

    def do_GET(self) -> None:  # the name http.server dispatches to
        with self.server.lock:
            self.server.targets.append(self.path)
        if self.path == "/robots.txt":
            body, ctype = ROBOTS, "text/plain"
        elif self.path == "/":
            body, ctype = HOME, "text/html; charset=utf-8"
        else:
            body, ctype = LEAF, "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # the signature of the base class
        return


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_worker_fetches_what_the_page_wrote(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, site: Site
) -> None:
    enqueue(redis_server, crawl_name, tmp_path, [site.url + "/"])
    out = tmp_path / "out"
    run = crawl(worker_args(redis_server.url, crawl_name, out, "--until-idle", "--concurrency", "2"))
    assert run.returncode == 0, run.stdout + run.stderr

    # the exact request lines: parameters in the page's order, the reordered twin fetched once, wrapped hrefs and
    # backslashes read as a browser reads them, and nothing under the robots rule
    assert sorted(site.targets) == sorted(
        ["/robots.txt", "/", "/list?s=shoes&paged=2", "/wrapped/over/lines", "/back/slash"]
    )
    records = {r["url"]: r for r in read_records(out)}
    home = records[site.url + "/"]
    assert home["error"] is None and home["title"] == "Home"  # malformed hrefs cost only themselves
    assert site.url + "/list?s=shoes&paged=2" in home["links"]
    assert site.url + "/list?paged=2&s=shoes" not in home["links"]  # one link per dedup key: the first spelling
    disallowed = records[site.url + "/?s=a&p=2"]  # the rule is matched against the URL as written
    assert disallowed["error"] == "robots_disallowed"
    assert records[site.url + "/list?s=shoes&paged=2"]["title"] == "Leaf"
    assert set(records) == {
        site.url + "/",
        site.url + "/list?s=shoes&paged=2",
        site.url + "/?s=a&p=2",
        site.url + "/wrapped/over/lines",
        site.url + "/back/slash",
    }
