"""Recurring URLs through a real worker (issue 16): conditional requests answered 304 cost no body, `changed`
says exactly which pages changed, and validators are kept pass after pass."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from crawler.testing.services import SiteHandler, serve_in_thread, wait_until
from tests.helpers import crawl, read_records, stats, worker_args
from tests.warc_readers import WARCIO, fast_read

PAGES = 200


class Versioned(SiteHandler):
    """Pages whose content is their version; ETag from the content, 304 for a matching If-None-Match. (The period
    is 5 s: a pass must end before its first URL is due again, or --until-idle never sees the crawl idle.)"""

    versions: ClassVar[dict[str, int]] = {}
    bodies_sent: ClassVar[int] = 0

    def do_GET(self) -> None:
        v = self.versions.get(self.path, 0)
        body = f"<title>{self.path} v{v}</title><p>version {v}</p>".encode()
        etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        type(self).bodies_sent += 1
        self.reply(200, body, "text/html", [("ETag", etag), ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT")])


@pytest.fixture
def site() -> Iterator[str]:
    Versioned.versions, Versioned.bodies_sent = {}, 0
    with serve_in_thread(Versioned) as url:
        yield url


def one_pass(redis_url: str, name: str, out: Path) -> list[dict[str, Any]]:
    wait_until(lambda: stats(redis_url, name).get("due", 0) >= PAGES, timeout_s=60, interval_s=0.1)
    args = worker_args(redis_url, name, out, "--until-idle", "--no-robots", "--no-follow")
    run = crawl([*args, "--per-host-concurrency", "0"])
    assert run.returncode == 0, run.stderr[-2000:]
    return read_records(out)


@pytest.mark.timeout(180)
def test_unchanged_pages_are_304s_and_changed_ones_say_so(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: str
) -> None:
    f = tmp_path / "urls.txt"
    f.write_text("".join(f"{site}/p/{i}\n" for i in range(PAGES)))
    run = crawl(["enqueue", str(f), "--every", "5s", "--redis", redis_server.url, "--crawl", crawl_name])
    assert run.returncode == 0 and f"added={PAGES} " in run.stdout, run.stdout + run.stderr
    args = worker_args(redis_server.url, crawl_name, tmp_path / "p1", "--until-idle", "--no-robots", "--no-follow")
    assert crawl([*args, "--per-host-concurrency", "0"]).returncode == 0
    first = read_records(tmp_path / "p1")
    assert len(first) == PAGES and all(r["status"] == 200 and r["changed"] is True for r in first)

    sent = Versioned.bodies_sent
    second = one_pass(redis_server.url, crawl_name, tmp_path / "p2")
    assert len(second) == PAGES
    assert all(r["status"] == 304 and r["not_modified"] and r["changed"] is False for r in second), second[:2]
    assert Versioned.bodies_sent == sent  # no body transferred on the unchanged pass

    changed = {f"/p/{i}" for i in range(0, PAGES, PAGES // 10)}
    for path in changed:
        Versioned.versions[path] = 1
    third = one_pass(redis_server.url, crawl_name, tmp_path / "p3")
    now_changed = {r["url"].split(site, 1)[1] for r in third if r["changed"]}
    assert now_changed == changed
    assert all(r["title"].endswith("v1") for r in third if r["changed"])
    s = stats(redis_server.url, crawl_name)
    assert s["consistent"] and s["passes"] == 3 * PAGES and s["dead"] == 0, s
    # crawl-wide traffic: every 304 counted, and what it saved estimated from the 200s' mean size
    assert s["not_modified"] == PAGES + (PAGES - len(changed)), s
    mean_200 = sum(r["bytes"] for r in first) / len(first)
    assert s["saved_bytes_estimate"] > 0.5 * s["not_modified"] * mean_200


@pytest.mark.timeout(180)
def test_with_warc_an_unchanged_page_is_archived_as_a_server_not_modified_revisit(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: str
) -> None:
    n = 20
    f = tmp_path / "urls.txt"
    f.write_text("".join(f"{site}/p/{i}\n" for i in range(n)))
    enq = crawl(["enqueue", str(f), "--every", "3s", "--redis", redis_server.url, "--crawl", crawl_name])
    assert enq.returncode == 0, enq.stderr
    warcs = []
    for p in ("p1", "p2"):
        if p == "p2":
            wait_until(lambda: stats(redis_server.url, crawl_name).get("due", 0) >= n, timeout_s=60, interval_s=0.1)
        args = worker_args(redis_server.url, crawl_name, tmp_path / p, "--until-idle", "--no-robots", "--no-follow")
        run = crawl([*args, "--warc", str(tmp_path / f"warc-{p}")])
        assert run.returncode == 0, run.stderr[-2000:]
        (path,) = sorted((tmp_path / f"warc-{p}").glob("*.warc.gz"))
        check = subprocess.run([*WARCIO, "check", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        warcs.append(fast_read(path))
    first, second = warcs
    assert sorted(r.uri for r in first if r.type.endswith("response")) == sorted(f"{site}/p/{i}" for i in range(n))
    revisits = [r for r in second if r.type.endswith("revisit")]
    assert sorted(r.uri for r in revisits) == sorted(f"{site}/p/{i}" for i in range(n))
    assert not [r for r in second if r.type.endswith("response")]
    for r in revisits:
        assert r.digests_ok and r.payload == b""
        assert r.headers["WARC-Profile"] == "http://netpreserve.org/warc/1.1/revisit/server-not-modified"
        assert r.headers["WARC-Refers-To-Target-URI"] == r.uri
        assert dict(r.http_headers).get("ETag", "").startswith('"')
    requests = [r for r in second if r.type.endswith("request")]
    assert len(requests) == n and all(dict(r.http_headers).get("If-None-Match") for r in requests)
