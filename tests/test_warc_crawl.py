"""`crawl worker --warc DIR`: a real crawl's WARC files, checked by warcio and read back by fastwarc (issue 15).

Each fetched HTML page has a response record whose payload is byte for byte what the site sent (fetched again
here, raw, content coding intact), redirects have their own response records, and both fetchers write them.
"""

from __future__ import annotations

import contextlib
import gzip
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from crawler.testing.services import RunningServer, SiteHandler, serve_in_thread
from tests.fetch_params import FETCHERS, fetcher_flags
from tests.helpers import PROXY_PASSWORD, PROXY_USER, crawl, enqueue, read_records, worker_args
from tests.warc_readers import WARCIO, Read, fast_read, replay

PAGES = 40


@pytest.fixture(scope="module")
def site() -> Any:
    from crawler.testing.services import start_server

    with start_server("crawler.testing.site_server", "--port", 0, "--pages", PAGES, "--seed", 11) as s:
        yield s


def checked_records(warc_dir: Path) -> list[Read]:
    """Every record of a crawl's WARC files, in order: each file passes `warcio check`, each record its digests
    as fastwarc verifies them."""
    files = sorted(warc_dir.glob("*.warc.gz"))
    assert files
    for f in files:
        assert subprocess.run([*WARCIO, "check", str(f)], capture_output=True).returncode == 0
    read = [r for f in files for r in fast_read(f)]
    assert all(r.digests_ok for r in read)
    return read


def raw_body(url: str) -> bytes:
    """The body as the site sends it, content coding intact (the WARC keeps it as transferred)."""
    req = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return bytes(resp.read())


@pytest.mark.parametrize("fetcher", FETCHERS)
def test_a_crawl_writes_valid_warc_with_every_page_byte_for_byte(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: RunningServer, fetcher: str
) -> None:
    enqueue(redis_server, crawl_name, tmp_path, [site.url + "/p/0"])
    out, warc_dir = tmp_path / "out", tmp_path / "warc"
    args = worker_args(redis_server.url, crawl_name, out, "--until-idle", "--warc", str(warc_dir), "--no-robots")
    run = crawl([*args, *fetcher_flags(fetcher), "--header", "Accept-Encoding: identity"])
    assert run.returncode == 0, run.stderr[-3000:]
    files = sorted(warc_dir.glob("*.warc.gz"))
    assert files and all(f.name.endswith(".warc.gz") for f in files)
    for f in files:
        assert subprocess.run([*WARCIO, "check", str(f)], capture_output=True).returncode == 0
        index = subprocess.run([*WARCIO, "index", str(f)], capture_output=True, text=True)
        assert index.returncode == 0 and '"warc-type": "warcinfo"' in index.stdout.splitlines()[0]
        with gzip.open(f) as g:  # one gzip member per record: the stream decodes whole
            assert g.read(8) == b"WARC/1.1"
    read = [r for f in files for r in fast_read(f)]
    assert all(r.digests_ok for r in read)
    responses = {r.uri: r for r in read if r.type.endswith("response")}
    requests = [r for r in read if r.type.endswith("request")]
    assert len(requests) == len(responses)
    html = [r for r in read_records(out) if r["status"] == 200 and r["content_type"] == "text/html"]
    assert html
    for rec in html:
        assert rec["http_version"] in ("1.1", "2")
        got = responses[rec["final_url"]]
        assert got.payload == raw_body(rec["final_url"]), rec["final_url"]
        assert got.headers.get("WARC-Concurrent-To") or any(
            r.headers.get("WARC-Concurrent-To") == got.record_id for r in requests
        )
    # every exchange was encoded in a parse process (redirect hops travel with their page): none by the writer
    assert run.summary()["warc"] == {"files": len(files), "records": len(read), "encoded_by_writer": 0, "failed": 0}
    redirected = [r for r in read_records(out) if r["redirects"]]
    for rec in redirected:  # the hop before the final response has its own response record
        assert rec["url"] in responses and responses[rec["url"]].http_headers


BIG = bytes(range(256)) * 1200  # 307,200 bytes, not valid UTF-8 anywhere near the cap: a cut must be exact
CAP = 100_000
HUNG_PARSER = """
def parse(page):
    if page.url.endswith("/hang"):
        while True:  # holds the GIL: only the pool's kill stops it
            pass
    return {"url": page.url}
"""


class CapSite(SiteHandler):
    """/big (declared length past the cap), /stream (no length: HTTP/1.0, body until close), /hang, /ok."""

    def do_GET(self) -> None:
        if self.path == "/big":
            self.reply(200, BIG, "text/html")
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(BIG)
        elif self.path in ("/hang", "/ok"):
            self.reply(200, f"<title>{self.path}</title>".encode(), "text/html")
        else:
            self.reply(404, b"", "text/plain")


@pytest.mark.parametrize("fetcher", FETCHERS)
def test_bodies_past_the_cap_are_archived_cut_at_it_and_a_timed_out_parse_still_archives_its_page(
    redis_server: Any, crawl_name: str, tmp_path: Path, fetcher: str
) -> None:
    parser = tmp_path / "hung_parser.py"
    parser.write_text(HUNG_PARSER)
    with serve_in_thread(CapSite) as base:
        urls = [f"{base}/{p}" for p in ("big", "stream", "hang", "ok")]
        enqueue(redis_server, crawl_name, tmp_path, urls)
        out, warc_dir = tmp_path / "out", tmp_path / "warc"
        args = worker_args(
            redis_server.url, crawl_name, out, "--until-idle", "--no-robots", "--warc", str(warc_dir),
            "--max-body-bytes", str(CAP), "--parser", f"{parser}:parse", "--parse-timeout", "1",
        )  # fmt: skip
        run = crawl([*args, *fetcher_flags(fetcher)])
    assert run.returncode == 0, run.stderr[-3000:]
    errors = {r["url"].rsplit("/", 1)[1]: r["error"] for r in read_records(out)}
    assert errors == {"big": "body_too_large", "stream": "body_too_large", "hang": "parse_timeout", "ok": None}
    read = checked_records(warc_dir)
    responses = {r.uri.rsplit("/", 1)[1]: r for r in read if r.type.endswith("response")}
    assert len([r for r in read if r.type.endswith("response")]) == 4  # one each, none twice
    assert set(responses) == {"big", "stream", "hang", "ok"}
    # the two cut bodies (never parsed) and the page whose parse was killed: the writer built those three
    assert run.summary()["warc"]["encoded_by_writer"] == 3
    for name in ("big", "stream"):  # written up to the cap, byte for byte, and said to be cut
        assert responses[name].payload == BIG[:CAP], name
        assert responses[name].headers.get("WARC-Truncated") == "length", name
    for name in ("hang", "ok"):  # the hung page's records were built by the writer, the parse process being dead
        assert responses[name].payload == f"<title>/{name}</title>".encode()
        assert "WARC-Truncated" not in responses[name].headers


def test_pywb_replays_a_crawled_page_with_its_title(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: RunningServer, pywb_bin: Path
) -> None:
    """The worker's own files (records built in its parse processes), replayed by a real replay tool."""
    enqueue(redis_server, crawl_name, tmp_path, [site.url + "/p/0"])
    out, warc_dir = tmp_path / "out", tmp_path / "warc"
    args = worker_args(redis_server.url, crawl_name, out, "--until-idle", "--warc", str(warc_dir), "--no-robots")
    run = crawl([*args, "--max-pages", "5"])
    assert run.returncode == 0, run.stderr[-3000:]
    titled = [r for r in read_records(out) if r["status"] == 200 and r.get("title")]
    assert titled
    page = titled[-1]
    html = replay(pywb_bin, sorted(warc_dir.glob("*.warc.gz")), page["final_url"], tmp_path)
    assert f"<title>{page['title']}</title>" in html


class FlakySite(SiteHandler):
    """/twice: 503 twice, then 200 (in-process retries); /later: 429 with Retry-After once, then 200 (a deferral
    through the frontier); /never: always 503 (dead letter). Every answer is HTML, so `--warc-content html` keeps
    it. Counts are per path, in this process."""

    hits: ClassVar[Counter[str]] = Counter()

    def do_GET(self) -> None:
        n = self.hits[self.path]
        self.hits[self.path] += 1
        if (self.path == "/twice" and n < 2) or self.path == "/never":
            self.reply(503, f"<title>busy {n}</title>".encode(), "text/html")
        elif self.path == "/later" and n == 0:
            self.reply(429, b"<title>slow down</title>", "text/html", [("Retry-After", "1")])
        else:
            self.reply(200, f"<title>{self.path} ok</title>".encode(), "text/html")


def test_every_attempt_is_archived_retried_deferred_and_dead_ones_too(
    redis_server: Any, crawl_name: str, tmp_path: Path
) -> None:
    FlakySite.hits.clear()
    with serve_in_thread(FlakySite) as base:
        enqueue(redis_server, crawl_name, tmp_path, [f"{base}/{p}" for p in ("twice", "later", "never")])
        out, warc_dir = tmp_path / "out", tmp_path / "warc"
        args = worker_args(
            redis_server.url, crawl_name, out, "--until-idle", "--no-robots", "--warc", str(warc_dir),
            "--retries", "2",
        )  # fmt: skip
        run = crawl(args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert {r["url"].rsplit("/", 1)[1]: r["status"] for r in read_records(out)} == {"twice": 200, "later": 200}
    read = checked_records(warc_dir)
    by_path: dict[str, list[tuple[int | None, bytes]]] = {}
    for r in read:
        if r.type.endswith("response"):
            by_path.setdefault(r.uri.rsplit("/", 1)[1], []).append((r.status, r.payload))
    # in the order fetched, each as the site sent it: the server saw exactly these requests
    assert by_path == {
        "twice": [(503, b"<title>busy 0</title>"), (503, b"<title>busy 1</title>"), (200, b"<title>/twice ok</title>")],
        "later": [(429, b"<title>slow down</title>"), (200, b"<title>/later ok</title>")],
        "never": [(503, f"<title>busy {n}</title>".encode()) for n in range(3)],
    }
    assert dict(FlakySite.hits) == {"/twice": 3, "/later": 2, "/never": 3}
    assert len([r for r in read if r.type.endswith("request")]) == 8


# a reason phrase and header values outside ASCII, as servers send them: UTF-8 bytes, and one latin-1 byte
ODD_BODY = b"<title>odd head</title>"
ODD_HEAD = (
    b"HTTP/1.1 200 Tr\xc3\xa8s bien\r\nContent-Type: text/html\r\nX-Name: caf\xc3\xa9\r\nX-Latin: \xe9t\xe9\r\n"
    b"Content-Length: " + str(len(ODD_BODY)).encode() + b"\r\nConnection: close\r\n\r\n"
)


class OddHeadSite(SiteHandler):
    def do_GET(self) -> None:
        self.wfile.write(ODD_HEAD + ODD_BODY)  # written raw: http.server would re-encode the reason
        self.close_connection = True


def whole_blocks(path: Path) -> dict[str, bytes]:
    """Each response record's block (HTTP head and payload, unparsed), by target URI, read by fastwarc."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    with path.open("rb") as f:
        return {
            r.headers.get("WARC-Target-URI"): r.reader.read()
            for r in ArchiveIterator(f, parse_http=False, record_types=WarcRecordType.response)
        }


@pytest.mark.parametrize("fetcher", FETCHERS)
def test_a_head_outside_ascii_is_archived_byte_for_byte_and_the_worker_goes_on(
    redis_server: Any, crawl_name: str, tmp_path: Path, fetcher: str
) -> None:
    """warcio percent-encodes non-ASCII header values (and raised on a non-ASCII reason, which stopped the commit
    loop, and with it every worker the URL went to): the head must be the server's bytes."""
    with serve_in_thread(OddHeadSite) as base:
        enqueue(redis_server, crawl_name, tmp_path, [f"{base}/odd"])
        out, warc_dir = tmp_path / "out", tmp_path / "warc"
        args = worker_args(redis_server.url, crawl_name, out, "--until-idle", "--no-robots", "--warc", str(warc_dir))
        run = crawl([*args, *fetcher_flags(fetcher)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert [(r["status"], r["title"]) for r in read_records(out)] == [(200, "odd head")]
    (f,) = sorted(warc_dir.glob("*.warc.gz"))
    assert subprocess.run([*WARCIO, "check", str(f)], capture_output=True).returncode == 0
    assert all(r.digests_ok for r in fast_read(f))
    assert whole_blocks(f) == {f"{base}/odd": ODD_HEAD + ODD_BODY}
    assert run.summary()["warc"]["failed"] == 0


BIG_REDIRECT_BODY = b"<p>moved</p>" * 10_000  # 120,000 bytes: past the 64 KiB a redirect's body is kept to


class RedirectSite(SiteHandler):
    """/loop/<n> redirects to /loop/<n+1> for ever; /big-redirect answers 302 with a 120 KB body, to /ok."""

    def do_GET(self) -> None:
        if self.path.startswith("/loop/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.reply(302, f"<a href=/loop/{n + 1}>next</a>".encode(), "text/html", [("Location", f"/loop/{n + 1}")])
        elif self.path == "/big-redirect":
            self.reply(302, BIG_REDIRECT_BODY, "text/html", [("Location", "/ok")])
        else:
            self.reply(200, b"<title>ok</title>", "text/html")


@pytest.mark.parametrize("fetcher", FETCHERS)
def test_redirects_are_archived_when_the_chain_fails_and_a_big_redirect_body_is_cut_not_dropped(
    redis_server: Any, crawl_name: str, tmp_path: Path, fetcher: str
) -> None:
    with serve_in_thread(RedirectSite) as base:
        enqueue(redis_server, crawl_name, tmp_path, [f"{base}/loop/0", f"{base}/big-redirect"])
        out, warc_dir = tmp_path / "out", tmp_path / "warc"
        args = worker_args(
            redis_server.url, crawl_name, out, "--until-idle", "--no-robots", "--warc", str(warc_dir),
            "--max-redirects", "2", "--retries", "0",
        )  # fmt: skip
        run = crawl([*args, *fetcher_flags(fetcher)])
    assert run.returncode == 0, run.stderr[-3000:]
    read = checked_records(warc_dir)
    responses = [(r.uri.removeprefix(base), r) for r in read if r.type.endswith("response")]
    # the chain that passed --max-redirects: each of its three answers, in order, as the site sent it
    loop = [(u, r.status, r.payload) for u, r in responses if u.startswith("/loop/")]
    assert loop == [(f"/loop/{n}", 302, f"<a href=/loop/{n + 1}>next</a>".encode()) for n in range(3)]
    big = dict(responses)["/big-redirect"]
    assert big.payload == BIG_REDIRECT_BODY[: 64 * 1024] and big.headers.get("WARC-Truncated") == "length"
    assert dict(responses)["/ok"].payload == b"<title>ok</title>"
    # each exchange is dated when its own request was sent (WARC 1.1, microseconds): a chain's dates increase
    dates = {u: r.headers["WARC-Date"] for u, r in responses}
    assert [dates[f"/loop/{n}"] for n in range(3)] == sorted({dates[f"/loop/{n}"] for n in range(3)})
    assert dates["/big-redirect"] < dates["/ok"]


@pytest.mark.parametrize("fetcher", FETCHERS)
@pytest.mark.parametrize("via", ["direct", "proxy"])
def test_warc_ip_address_is_the_site_s_and_left_out_through_a_proxy(
    redis_server: Any, crawl_name: str, tmp_path: Path, site: RunningServer, fetcher: str, via: str
) -> None:
    """Direct, the address connected to is the site's; through a gateway it is the gateway's, which would tell
    a reader the site lived there: then the header is left out. No proxy secret reaches the files either way."""
    enqueue(redis_server, crawl_name, tmp_path, [site.url + "/p/0"])
    out, warc_dir = tmp_path / "out", tmp_path / "warc"
    args = worker_args(redis_server.url, crawl_name, out, "--until-idle", "--warc", str(warc_dir), "--no-robots")
    with contextlib.ExitStack() as stack:
        if via == "proxy":
            from crawler.testing.services import start_server

            p = stack.enter_context(
                start_server(
                    "crawler.testing.proxy_server", "--port", 0, "--user", PROXY_USER, "--password", PROXY_PASSWORD
                )
            )
            args += ["--proxy", p.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")]
        run = crawl([*args, *fetcher_flags(fetcher), "--max-pages", "10"])
    assert run.returncode == 0, run.stderr[-3000:]
    responses = [r for r in checked_records(warc_dir) if r.type.endswith("response")]
    assert len(responses) >= 10
    addresses = {r.headers.get("WARC-IP-Address") for r in responses}
    assert addresses == ({"127.0.0.1"} if via == "direct" else {None})
    blob = b"".join(gzip.decompress(f.read_bytes()) for f in warc_dir.glob("*.warc.gz"))
    assert PROXY_PASSWORD.encode() not in blob
