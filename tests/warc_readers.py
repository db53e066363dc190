"""Readers for the WARC files the crawler writes, shared by the tests: fastwarc (an independent reader, digests
verified), warcio (the format's reference library, and its `warcio check`/`index` CLI), and pywb's replay."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from fastwarc.warc import ArchiveIterator as FastIterator
from fastwarc.warc import WarcRecordType
from warcio.archiveiterator import ArchiveIterator as WarcioIterator

from crawler.testing.services import free_port, stop_process

WARCIO = [sys.executable, "-c", "import sys; from warcio.cli import main; sys.exit(main())"]


@dataclass(frozen=True)
class Read:
    """One record as fastwarc reads it."""

    type: str
    uri: str
    record_id: str
    headers: dict[str, str]
    http_headers: list[tuple[str, str]]
    payload: bytes
    digests_ok: bool
    status: int | None = None  # the HTTP status of a response or revisit record


def fast_read(path: Path) -> list[Read]:
    out = []
    with path.open("rb") as f:
        for rec in FastIterator(f, parse_http=False):
            ok = rec.verify_block_digest(consume=False)  # the whole block: before the HTTP head is parsed off it
            if rec.record_type in (WarcRecordType.response, WarcRecordType.request):
                rec.parse_http()
                ok = ok and rec.verify_payload_digest(consume=False)
            elif rec.record_type == WarcRecordType.revisit:
                rec.parse_http()  # a server-not-modified revisit: the 304's head, and no payload to digest
            out.append(
                Read(
                    type=str(rec.record_type),
                    uri=rec.headers.get("WARC-Target-URI") or "",
                    record_id=rec.record_id or "",
                    headers=dict(rec.headers.items()),
                    http_headers=list(rec.http_headers.items()) if rec.http_headers else [],
                    payload=rec.reader.read(),
                    digests_ok=ok,
                    status=rec.http_headers.status_code if rec.http_headers and rec.http_headers.status_code else None,
                )
            )
    return out


def warcio_read(path: Path) -> list[tuple[str, str, bytes]]:
    """(type, uri, raw payload: content coding intact) per record, by warcio."""
    with path.open("rb") as f:
        return [
            (
                r.rec_type,
                r.rec_headers.get_header("WARC-Target-URI") or "",
                r.raw_stream.read(),
            )  # raw: content coding intact
            for r in WarcioIterator(f)
        ]


def replay(bin_dir: Path, warc_files: list[Path], url: str, work: Path) -> str:
    """The page at `url` as pywb replays it from `warc_files` (its own collection under `work`)."""
    subprocess.run([bin_dir / "wb-manager", "init", "c"], cwd=work, check=True, capture_output=True)
    subprocess.run([bin_dir / "wb-manager", "add", "c", *warc_files], cwd=work, check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [bin_dir / "wayback", "-p", str(port), "-b", "127.0.0.1"],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return get_until(f"http://127.0.0.1:{port}/c/mp_/{url}", deadline=time.monotonic() + 30)
    finally:
        stop_process(proc, 5)


def get_until(url: str, deadline: float) -> str:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                data: bytes = resp.read()
                if resp.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                return data.decode("utf-8", "replace")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # poll with a deadline: the server is still starting
