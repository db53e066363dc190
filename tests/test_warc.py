"""WARC sink: what a real HTTP exchange becomes, read back by warcio's checker and indexer, by fastwarc (an
independent reader) and, where installed, replayed by pywb; rotation; roll-back of failed writes; SIGKILL."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from warcio.utils import Digester

from crawler.parse import ParseTask, parse_pages
from crawler.testing.services import stop_process
from crawler.warc import REDACTED, WarcExchange, WarcWriteError, WarcWriter, encode, sha1_label
from tests.warc_readers import WARCIO, fast_read, replay, warcio_read

REPO = Path(__file__).resolve().parents[1]
CAP = 4000  # the test's body cap: /big is cut here
PAGE = b"<html><head><title>Archived page</title></head><body>" + b"x" * 3000 + b"</body></html>"
BINARY = bytes(range(256)) * 10 + b"\r\n\r\n\x00\x1f\x8b"  # under the cap: archived whole
PAGE_GZ = gzip.compress(PAGE, mtime=0)
BIG = os.urandom(CAP * 3)


Head = list[tuple[str, str]]


def _send(handler: http.server.BaseHTTPRequestHandler, status: int, headers: Head, body: bytes) -> None:
    handler.send_response(status)
    for k, v in headers:
        handler.send_header(k, v)
    handler.end_headers()
    handler.wfile.write(body)


class _Site(http.server.BaseHTTPRequestHandler):
    """Two redirect hops to a gzip page sent chunked, a binary file, and a body larger than the cap."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/r1":
            _send(self, 302, [("Location", "/r2"), ("Content-Length", "0")], b"")
        elif self.path == "/r2":
            _send(self, 301, [("Location", "/page?x=1"), ("Content-Length", "0")], b"")
        elif self.path == "/page?x=1":
            self.send_response(200)
            for k, v in [("Content-Type", "text/html"), ("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked")]:
                self.send_header(k, v)
            self.send_header("Set-Cookie", "a=1")
            self.send_header("Set-Cookie", "b=2")
            self.end_headers()
            data = PAGE_GZ
            for i in range(0, len(data), 700):
                chunk = data[i : i + 700]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/bin":
            head = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BINARY)))]
            _send(self, 200, head, BINARY)
        elif self.path == "/big":
            _send(self, 200, [("Content-Type", "text/plain"), ("Content-Length", str(len(BIG)))], BIG)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def _fetch(session: aiohttp.ClientSession, url: str) -> WarcExchange:
    """One hop as the worker fetches it: raw headers and raw body (content coding intact), capped at CAP."""
    started = datetime.now(UTC)
    headers = {"Cookie": "session=s3cr3t", "Authorization": "Bearer t0ken"}
    async with session.get(url, allow_redirects=False, headers=headers) as resp:
        transport = resp.connection.transport if resp.connection else None  # released once the body is read
        peer = transport.get_extra_info("peername") if transport else None
        body = bytearray()
        async for chunk in resp.content.iter_chunked(1024):
            body += chunk
            if len(body) >= CAP:
                break
        truncated = len(body) > CAP or not resp.content.at_eof()
        return WarcExchange(
            url=url,
            started_at=started,
            request_method="GET",
            request_headers=tuple(resp.request_info.headers.items()),
            http_version=f"{resp.version.major}.{resp.version.minor}" if resp.version else "1.1",
            status=resp.status,
            reason=resp.reason or "",
            response_headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers),
            body=bytes(body[:CAP]),
            truncated=truncated,
            peer_ip=peer[0] if peer else None,
        )


async def _crawl(base: str) -> list[WarcExchange]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        hops = []
        url = base + "/r1"
        for _ in range(3):  # r1 -> r2 -> page: each hop its own exchange
            ex = await _fetch(session, url)
            hops.append(ex)
            location = dict(ex.response_headers).get("Location")
            if not location:
                break
            url = base + location
        return [*hops, await _fetch(session, base + "/bin"), await _fetch(session, base + "/big")]


def exchange(url: str, body: bytes, **kw: Any) -> WarcExchange:
    return WarcExchange(
        url=url,
        started_at=datetime.now(UTC),
        request_method="GET",
        request_headers=(("Host", "site.test"), ("Proxy-Authorization", "Basic dXNlcjpwYXNz")),
        http_version="1.1",
        status=200,
        reason="OK",
        response_headers=(("Content-Type", "text/html"), ("Content-Length", str(len(body)))),
        body=body,
        **kw,
    )


@pytest.fixture(scope="module")
def fetched(site: str) -> list[WarcExchange]:
    return asyncio.run(_crawl(site))


def test_fetched_exchanges_are_archived_as_sent(tmp_path: Path, site: str, fetched: list[WarcExchange]) -> None:
    with WarcWriter(tmp_path, "w-1", 10**9, "crawl/test") as writer:
        writer.write(fetched[:3])
        writer.write(fetched[3:])
    (path,) = writer.files
    assert [e.status for e in fetched] == [302, 301, 200, 200, 200]

    check = subprocess.run([*WARCIO, "check", "-v", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("digest pass") == 1 + 2 * len(fetched)
    index = subprocess.run([*WARCIO, "index", str(path)], capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in index.stdout.splitlines()]
    assert [r["warc-type"] for r in rows] == ["warcinfo"] + ["response", "request"] * len(fetched)

    records = fast_read(path)
    assert all(r.digests_ok for r in records)
    responses = {r.uri: r for r in records if r.type == "response"}
    sent = {
        "/r1": b"",
        "/r2": b"",
        "/page?x=1": PAGE_GZ,
        "/bin": BINARY,
        "/big": BIG[:CAP],
    }
    assert sorted(responses) == sorted(site + p for p in sent)
    for p, body in sent.items():
        assert responses[site + p].payload == body, p
    page = responses[site + "/page?x=1"]
    assert gzip.decompress(page.payload) == PAGE  # content coding intact, transfer coding removed
    assert [v for k, v in page.http_headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert ("X-Crawler-Transfer-Encoding", "chunked") in page.http_headers
    assert responses[site + "/big"].headers.get("WARC-Truncated") == "length"
    assert "WARC-Truncated" not in responses[site + "/bin"].headers
    # aiohttp shows the peer only while it holds the connection (surely for the capped /big); else it is unknown
    assert fetched[-1].peer_ip == "127.0.0.1"
    assert {u: r.headers.get("WARC-IP-Address") for u, r in responses.items()} == {e.url: e.peer_ip for e in fetched}

    requests = [r for r in records if r.type == "request"]
    by_id = {r.record_id: r for r in records}
    for req in requests:
        assert by_id[req.headers["WARC-Concurrent-To"]].uri == req.uri
        assert dict(req.http_headers)["Cookie"] == REDACTED
        assert dict(req.http_headers)["Authorization"] == REDACTED
    assert [(t, u, p) for t, u, p in warcio_read(path) if t == "response"] == [
        ("response", r.uri, r.payload) for r in records if r.type == "response"
    ]


def test_secrets_never_reach_the_file(tmp_path: Path, fetched: list[WarcExchange]) -> None:
    with WarcWriter(tmp_path, "w", 10**9, "crawl/test") as writer:
        writer.write([*fetched, exchange("http://site.test/", b"hi")])
    raw = gzip.decompress(writer.files[0].read_bytes())
    for secret in (b"s3cr3t", b"t0ken", b"dXNlcjpwYXNz"):
        assert secret not in raw
    assert raw.count(REDACTED.encode()) == 2 * len(fetched) + 1
    (info,) = [r for r in fast_read(writer.files[0]) if r.type == "warcinfo"]
    fields = dict(line.split(": ", 1) for line in info.payload.decode().splitlines())
    assert sorted(fields) == ["conformsTo", "format", "hostname", "isPartOf", "software"]  # no proxy, no settings
    assert (fields["software"], fields["isPartOf"]) == ("crawl/test", "w")


def test_rotation_starts_every_file_with_warcinfo_and_never_reuses_one(tmp_path: Path) -> None:
    body = os.urandom(3000)
    with WarcWriter(tmp_path, "w-7", 10_000, "crawl/test") as writer:
        for i in range(12):
            writer.write([exchange(f"http://site.test/{i}", body)])
    assert len(writer.files) >= 3
    assert [p.name for p in writer.files] == [f"w-7-{n}.warc.gz" for n in range(1, len(writer.files) + 1)]
    uris = []
    for path in writer.files:
        records = fast_read(path)
        assert records[0].type == "warcinfo"
        assert all(r.type != "warcinfo" for r in records[1:])
        uris += [r.uri for r in records if r.type == "response"]
    assert uris == [f"http://site.test/{i}" for i in range(12)]

    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with WarcWriter(tmp_path, "w-7", 10_000, "crawl/test") as second:
        second.write([exchange("http://site.test/again", body)])
    assert second.files == [tmp_path / f"w-7-{len(writer.files) + 1}.warc.gz"]
    assert all(p.read_bytes() == data for p, data in before.items())


_FSIZE_SCRIPT = """
import json, os, resource, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from crawler.warc import WarcExchange, WarcWriteError, WarcWriter

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # exceed the limit: EFBIG instead of death
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
writer = WarcWriter(Path(sys.argv[1]), "w", 10**9, "crawl/test")
def batch(k):
    return [WarcExchange("http://site.test/%d/%d" % (k, i), datetime.now(UTC), "GET", (), "1.1", 200, "OK",
                         (("Content-Type", "application/octet-stream"),), os.urandom(20_000)) for i in range(5)]
ok = 0
while True:
    try:
        writer.write(batch(ok))
    except WarcWriteError as exc:
        failed = {"errno": exc.errno, "size": writer.files[0].stat().st_size}
        break
    ok += 1
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
writer.write(batch(ok))  # the disk came back: the same file goes on from its last complete record
writer.close()
print(json.dumps({"ok": ok, **failed}))
"""


def test_failed_write_is_cut_back_to_the_last_complete_batch(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FSIZE_SCRIPT, str(tmp_path), "350000"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert result["errno"] == 27  # EFBIG: the write passed RLIMIT_FSIZE
    assert result["ok"] >= 2
    (path,) = tmp_path.iterdir()
    check = subprocess.run([*WARCIO, "check", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    records = fast_read(path)
    assert all(r.digests_ok for r in records)
    uris = [r.uri for r in records if r.type == "response"]
    expected = [f"http://site.test/{k}/{i}" for k in [*range(result["ok"]), result["ok"]] for i in range(5)]
    assert uris == expected  # every complete batch, nothing of the failed one, then the batch after recovery
    assert result["size"] < 350_000


def test_removed_file_or_directory_raises_and_the_next_write_starts_afresh(tmp_path: Path) -> None:
    out = tmp_path / "warc"
    writer = WarcWriter(out, "w", 10**9, "crawl/test")
    writer.write([exchange("http://site.test/1", b"one")])
    writer.files[0].unlink()
    with pytest.raises(WarcWriteError):
        writer.write([exchange("http://site.test/2", b"two")])
    writer.write([exchange("http://site.test/3", b"three")])
    assert [r.uri for r in fast_read(writer.files[-1]) if r.type == "response"] == ["http://site.test/3"]
    shutil.rmtree(out)
    with pytest.raises(WarcWriteError):
        writer.write([exchange("http://site.test/4", b"four")])
    with pytest.raises(WarcWriteError):  # cannot create a new file either, and says so
        writer.write([exchange("http://site.test/5", b"five")])
    out.mkdir()
    writer.write([exchange("http://site.test/6", b"six")])
    writer.close()
    assert [r.uri for r in fast_read(writer.files[-1]) if r.type == "response"] == ["http://site.test/6"]


_LOOP_SCRIPT = """
import os, sys
from datetime import UTC, datetime
from pathlib import Path
from crawler.warc import WarcExchange, WarcWriter

writer = WarcWriter(Path(sys.argv[1]), "w", 10**10, "crawl/test")
k = 0
while True:
    writer.write([WarcExchange("http://site.test/%d" % (k * 4 + i), datetime.now(UTC), "GET", (), "1.1", 200, "OK",
                               (), os.urandom(300_000)) for i in range(4)])
    print(k, flush=True)
    k += 1
"""


def test_sigkilled_writer_leaves_a_file_readable_to_its_last_complete_record(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOOP_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if int(line) >= 2:
                break
        path = tmp_path / "w-1.warc.gz"
        deadline = time.monotonic() + 10
        size = path.stat().st_size
        while path.stat().st_size == size and time.monotonic() < deadline:  # kill while a batch is being written
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop_process(proc, 5)
    # Both readers return every record; only the last may be cut, and then its block digest fails.
    records = fast_read(path)
    assert records[0].type == "warcinfo"
    assert all(r.digests_ok for r in records[:-1])
    complete = [r for r in records if r.digests_ok]
    responses = [r.uri for r in complete if r.type == "response"]
    assert len(responses) >= 12  # the three batches reported written, at least
    assert responses == [f"http://site.test/{i}" for i in range(len(responses))]
    assert [(t, u) for t, u, _ in warcio_read(path)] == [(r.type, r.uri) for r in records]
    _check_cut_file_reads(tmp_path / "cut", path.read_bytes())


def _check_cut_file_reads(directory: Path, data: bytes) -> None:
    """Whether or not the kill cut a record, a file cut mid-record reads to its last complete record."""
    directory.mkdir()
    cut = directory / "cut.warc.gz"
    cut.write_bytes(data[: len(data) - 1000])
    records = fast_read(cut)
    assert all(r.digests_ok for r in records[:-1])
    assert not records[-1].digests_ok
    assert [(t, u) for t, u, _ in warcio_read(cut)] == [(r.type, r.uri) for r in records]


def test_exchange_validation() -> None:
    with pytest.raises(ValueError, match="timezone"):
        WarcExchange("http://a.test/", datetime.now(), "GET", (), "1.1", 200, "OK", (), b"")
    with pytest.raises(ValueError, match="status"):
        WarcExchange("http://a.test/", datetime.now(UTC), "GET", (), "1.1", 42, "OK", (), b"")


def test_pywb_replays_the_archived_page(tmp_path: Path, site: str, fetched: list[WarcExchange], pywb_bin: Path) -> None:
    with WarcWriter(tmp_path / "warc", "w", 10**9, "crawl/test") as writer:
        writer.write(fetched)
    html = replay(pywb_bin, writer.files, f"{site}/page?x=1", tmp_path)
    assert "<title>Archived page</title>" in html


def test_a_record_that_cannot_be_built_is_left_out_and_counted_and_the_rest_of_its_batch_lands(
    tmp_path: Path,
) -> None:
    """Raising would fail the whole commit, hand the batch back, and meet the same response again: a crash loop."""
    with WarcWriter(tmp_path, "w", 10**9, "crawl/test") as writer:
        writer.write([exchange("http://site.test/ok", b"ok")])
        bad = exchange("http://site.test/bad", b"x")
        object.__setattr__(bad, "body", None)  # not bytes: warcio fails while building the record
        writer.write([exchange("http://site.test/first-of-batch", b"1"), bad])
        writer.write([exchange("http://site.test/after", b"2")])
    uris = [r.uri for r in fast_read(writer.files[0]) if r.type == "response"]
    assert uris == ["http://site.test/ok", "http://site.test/first-of-batch", "http://site.test/after"]
    assert writer.stats() == {"files": 1, "records": 1 + 6, "encoded_by_writer": 3, "failed": 1}


def test_a_parse_process_encodes_the_records_and_the_body_crosses_to_it_once(
    tmp_path: Path, fetched: list[WarcExchange]
) -> None:
    """The worker sends a page's exchanges with its parse task; pickle sends the shared body once, the parse
    process returns gzipped records, and the writer appends them: the same records as encoding them itself."""
    body = os.urandom(200_000)  # incompressible: a second copy in the message would show in its size
    page_ex = exchange("http://site.test/p", body)
    task = ParseTask(body=body, url=page_ex.url, final_url=page_ex.url, warc=(*fetched[:2], page_ex))
    assert len(pickle.dumps(task)) < len(body) + 20_000
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
        (page,) = pool.submit(parse_pages, [task]).result(timeout=60)
    assert page.warc is not None and page.warc.records == 6
    with WarcWriter(tmp_path / "a", "w", 10**9, "crawl/test") as pooled:
        pooled.write([page.warc, exchange("http://site.test/after", b"after")])
    with WarcWriter(tmp_path / "b", "w", 10**9, "crawl/test") as direct:
        direct.write([*task.warc, exchange("http://site.test/after", b"after")])
    assert pooled.records == direct.records == 1 + 8
    got, want = fast_read(pooled.files[0]), fast_read(direct.files[0])
    assert all(r.digests_ok for r in got)
    assert [(r.type, r.uri, r.payload, r.http_headers) for r in got] == [
        (r.type, r.uri, r.payload, r.http_headers) for r in want
    ]
    assert got[5].payload == body


def test_records_that_cannot_be_built_in_the_parse_process_are_left_to_the_writer() -> None:
    bad = exchange("http://site.test/p", b"x")
    object.__setattr__(bad, "body", None)  # not bytes: warcio fails while building the record
    assert encode([bad]) is None
    page = parse_pages([ParseTask(body=b"<title>t</title>", url=bad.url, final_url=bad.url, warc=(bad,))])[0]
    assert page.warc is None and page.title == "t"


def test_no_value_can_split_a_record_s_header_block(tmp_path: Path) -> None:
    ex = replace(
        exchange("http://site.test/p", b"x", peer_ip="127.0.0.1\r\nWARC-Injected: 1"),
        reason="OK\r\nX-Injected: 1",
        response_headers=(("X-A", "1\r\nX-Injected: 2"),),
    )
    with WarcWriter(tmp_path, "w", 10**9, "crawl/test") as writer:
        writer.write([ex])
    (resp,) = [r for r in fast_read(writer.files[0]) if r.type == "response"]
    assert resp.digests_ok and "WARC-Injected" not in resp.headers
    assert [k for k, _ in resp.http_headers] == ["X-A"]


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_our_digest_label_is_warcio_s(head: bytes, payload: bytes) -> None:
    ours = sha1_label(head, payload)
    digester = Digester("sha1")
    digester.update(head + payload)
    assert ours == str(digester)


def test_heads_are_written_as_they_travel_a_response_s_bytes_as_received_a_request_s_as_utf_8(tmp_path: Path) -> None:
    """The fetchers keep a response's bytes as latin-1 characters; the HTTP client sends a request's as UTF-8."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    received = "caf\xc3\xa9 \xe9t\xe9"  # the bytes c3 a9 and e9, one character each
    ex = WarcExchange(
        url="http://site.test/p", started_at=datetime.now(UTC), request_method="GET",
        request_headers=(("Host", "site.test"), ("X-Label", "café")), http_version="1.1", status=200,
        reason="Tr\xc3\xa8s bien", response_headers=(("X-Name", received),), body=b"x",
    )  # fmt: skip
    with WarcWriter(tmp_path, "w", 10**9, "crawl/test") as writer:
        writer.write([ex])
    with writer.files[0].open("rb") as f:
        blocks = {str(r.record_type): r.reader.read() for r in ArchiveIterator(f, parse_http=False)}
    response = blocks[str(WarcRecordType.response)]
    assert response.startswith(b"HTTP/1.1 200 Tr\xc3\xa8s bien\r\nX-Name: caf\xc3\xa9 \xe9t\xe9\r\n\r\nx")
    assert b"\r\nX-Label: caf\xc3\xa9\r\n" in blocks[str(WarcRecordType.request)]
