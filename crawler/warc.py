"""WARC/1.1 sink: each fetch exchange as a `request` and a `response` record, one gzip member per record.

The format is written by warcio (record headers, HTTP header blocks); this module computes the two SHA-1 digests
(warcio's own passes cost more than the hashing) and gzips each record with ISA-L, and owns what warcio leaves to
the caller: file naming and rotation, the write-then-flush guarantee, and rolling a failed write back. `encode`
builds records anywhere (the worker's parse processes call it); `WarcWriter` appends them, or builds them itself.

Guarantees
- `WarcWriter.write` returns only after the batch's bytes reached the kernel (and the disk with `fsync=True`), so a
  URL acked after it returns has its records on file. A SIGKILL can leave only a cut last record: readers (warcio,
  fastwarc) return every complete record, then the cut one, whose block digest fails (tests/test_warc.py).
- A failed write (ENOSPC, EIO, EFBIG, the file or its directory removed) is cut back to the end of the previous
  batch, so the file ends at a record boundary and holds none of the failed batch; then `WarcWriteError` is raised
  and the caller hands that batch's leases back. The batch is all or nothing: no duplicates from partial batches.
- A writer never appends into an existing file: it creates `DIR/<worker-id>-<n>.warc.gz` with the next free `n`
  (O_EXCL), starting each file with a `warcinfo` record, and moves to a new file once `rotate_bytes` is passed.

What a record holds
- `response`: the status line and headers as received (byte for byte: `_WireHead`), in order, duplicates kept,
  and the body as transferred:
  content coding intact (gzip stays gzip), transfer coding removed (the HTTP client de-chunks). Because the body is
  no longer chunked, a `Transfer-Encoding` header is renamed `X-Crawler-Transfer-Encoding` (StormCrawler's
  convention) so that readers do not try to de-chunk it. A body cut at the size cap carries `WARC-Truncated: length`.
- `revisit` (instead of `response`) for a 304: profile server-not-modified, the 304's status line and headers,
  `WARC-Refers-To-Target-URI` (the same URL), no payload; `WARC-Refers-To-Date` is left out (the capture it
  revisits is not known to the worker).
- `request`: the request line and headers sent, with the values of `Authorization`, `Proxy-Authorization` and
  `Cookie` replaced by `REDACTED` (secrets never reach the output), `WARC-Concurrent-To` naming its response.
- `warcinfo`: software, format, host name and worker id; nothing of the proxy configuration.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from isal import isal_zlib
from warcio.statusandheaders import StatusAndHeaders
from warcio.timeutils import datetime_to_iso_date
from warcio.warcwriter import WARCWriter as _WarcioWriter

log = logging.getLogger("crawl.warc")

REDACTED = "REDACTED"
SECRET_REQUEST_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
# ISA-L level 1 (python-isal): on the benchmark's HTML 107 us a 52 KB page and 25.8% of its size, where zlib's level
# 1 takes 440 us for 26.4% (zlib-ng level 1: 165 us, 34%); warcio's own gzip wrapper uses zlib level 9
GZIP_LEVEL = 1
GZIP_WBITS = 31  # 16 + 15: a gzip member (header and trailer), one per record
# WARC 1.1 section 6.7.2: a 304 to a conditional request, recorded as a revisit of the same URL, headers only
SERVER_NOT_MODIFIED = "http://netpreserve.org/warc/1.1/revisit/server-not-modified"

Headers = tuple[tuple[str, str], ...]


class WarcWriteError(OSError):
    """A batch could not be written; the file was cut back to its last complete record (or abandoned).

    Subclasses OSError so a caller treating every sink failure as "output unavailable, hand the leases back" can
    catch one class; `errno` and the chained cause carry the original error.
    """


@dataclass(frozen=True, slots=True)
class WarcExchange:
    """One HTTP request and its response, as the fetcher saw them. Each redirect hop is its own exchange.

    `response_headers` are raw, as received, in order, duplicates kept (decode bytes as latin-1). `body` is the
    message body as transferred: content coding intact, transfer coding removed, cut at the cap when `truncated`.
    `started_at` is when the request was sent, timezone-aware. `peer_ip` is the address connected to, when known
    (through a proxy it is the gateway's: the worker passes None then, see workers/archive.py).
    """

    url: str
    started_at: datetime
    request_method: str
    request_headers: Headers
    http_version: str  # "1.1", as in the status line
    status: int
    reason: str
    response_headers: Headers
    body: bytes
    truncated: bool = False
    peer_ip: str | None = None

    def __post_init__(self) -> None:
        if self.started_at.tzinfo is None:
            raise ValueError("WarcExchange.started_at must be timezone-aware")
        if not 100 <= self.status <= 999:
            raise ValueError(f"WarcExchange.status out of range: {self.status}")


def _clean(value: str) -> str:
    """Header values never carry CR/LF into the record (a header block cannot be split by a value)."""
    return value.replace("\r", " ").replace("\n", " ")


def request_headers_for_record(headers: Headers) -> list[tuple[str, str]]:
    """The request headers as recorded: secrets replaced by REDACTED, everything else as sent."""
    return [(k, REDACTED if k.lower() in SECRET_REQUEST_HEADERS else _clean(v)) for k, v in headers]


def response_headers_for_record(headers: Headers) -> list[tuple[str, str]]:
    """The response headers as recorded: as received, except that the (removed) transfer coding is renamed."""
    return [("X-Crawler-Transfer-Encoding" if k.lower() == "transfer-encoding" else k, _clean(v)) for k, v in headers]


_B32_PAIRS = tuple(a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def sha1_label(data: bytes, *more: bytes) -> str:
    """`sha1:<base32>` of the concatenation, as warcio's Digester writes it (RFC 4648 base32 of the 20-byte
    digest). Here because warcio digests a record by reading its payload stream twice in 16 KiB chunks, and
    Python 3.11's base32 is pure Python: on a 52 KB page this is 4x less Python per record; hashlib does the rest."""
    h = hashlib.sha1(data)
    for m in more:
        h.update(m)
    n = int.from_bytes(h.digest(), "big")  # 160 bits: 16 base32 pairs of 10 bits, no padding
    return "sha1:" + "".join([_B32_PAIRS[(n >> s) & 1023] for s in range(150, -1, -10)])


class _WireHead(StatusAndHeaders):  # type: ignore[misc]
    """An HTTP head written as it went over the wire. The fetchers keep each received byte as one latin-1
    character (`wire="latin-1"`, a response); warcio's own buffer is ASCII, percent-encoding any other value
    (RFC 8187), which would change what the server sent (`café` -> `caf%C3%83%C2%A9`) and, for a reason phrase,
    raise. A request's head is written as the HTTP client sends it: UTF-8 (`wire="utf-8"`)."""

    def __init__(self, statusline: str, headers: list[tuple[str, str]], protocol: str = "", *, wire: str) -> None:
        super().__init__(statusline, headers, protocol=protocol)
        self.wire = wire

    def compute_headers_buffer(self, header_filter: Any = None) -> None:
        self.headers_buff = self.to_str(header_filter).encode(self.wire, "replace") + b"\r\n"


def _request_target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class _RecordEncoder:
    """Builds records with warcio and gzips each one as its own member. Pure CPU, no file: testable alone."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()  # reused: warcio writes one record into it, we take and reset it
        self._warcio = _WarcioWriter(self._buffer, gzip=False, warc_version="1.1")

    def _gzip_record(self, record: Any) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._warcio.write_record(record)
        with self._buffer.getbuffer() as block:  # no copy; released before the buffer is reset
            return isal_zlib.compress(block, GZIP_LEVEL, GZIP_WBITS)

    def _revisit(self, ex: WarcExchange, warc_headers: dict[str, str], http: StatusAndHeaders) -> Any:
        """A 304 as a `revisit` record (profile server-not-modified): the 304's status line and headers, no
        payload, no payload digest (this answer has none; the revisited capture's is not known here)."""
        warc_headers["WARC-Profile"] = SERVER_NOT_MODIFIED
        warc_headers["WARC-Refers-To-Target-URI"] = ex.url
        http.compute_headers_buffer()
        warc_headers["WARC-Block-Digest"] = sha1_label(http.headers_buff)
        return self._warcio.create_warc_record(ex.url, "revisit", warc_headers_dict=warc_headers, http_headers=http)

    def warcinfo(self, filename: str, info: dict[str, str]) -> bytes:
        return self._gzip_record(self._warcio.create_warcinfo_record(filename, info))

    def exchange(self, ex: WarcExchange) -> bytes:
        """The response record, then the request record that names it as concurrent."""
        date = datetime_to_iso_date(ex.started_at.astimezone(UTC).replace(tzinfo=None), use_micros=True)
        common = {"WARC-Date": date}
        if ex.peer_ip:
            common["WARC-IP-Address"] = _clean(ex.peer_ip)
        resp_headers = dict(common)
        if ex.truncated:
            resp_headers["WARC-Truncated"] = "length"
        status_line = f"{ex.status} {_clean(ex.reason)}".rstrip()
        http_resp = _WireHead(
            status_line,
            response_headers_for_record(ex.response_headers),
            protocol=f"HTTP/{ex.http_version}",
            wire="latin-1",
        )
        if ex.status == 304:
            response = self._revisit(ex, resp_headers, http_resp)
        else:
            _digests(resp_headers, http_resp, ex.body)
            response = self._warcio.create_warc_record(
                ex.url,
                "response",
                payload=io.BytesIO(ex.body),
                length=len(ex.body),
                warc_headers_dict=resp_headers,
                http_headers=http_resp,
            )
        req_headers = dict(common)
        req_headers["WARC-Concurrent-To"] = response.rec_headers.get_header("WARC-Record-ID")
        http_req = _WireHead(
            f"{ex.request_method} {_request_target(ex.url)} HTTP/{ex.http_version}",
            request_headers_for_record(ex.request_headers),
            wire="utf-8",
        )
        _digests(req_headers, http_req, b"")
        request = self._warcio.create_warc_record(
            ex.url, "request", payload=io.BytesIO(b""), length=0, warc_headers_dict=req_headers, http_headers=http_req
        )
        return self._gzip_record(response) + self._gzip_record(request)


def _digests(warc_headers: dict[str, str], http: StatusAndHeaders, payload: bytes) -> None:
    """Both digests, given to warcio with the record so that it skips its own digesting passes. The block is the
    HTTP head as warcio writes it (`compute_headers_buffer`, which it calls again, with the same result) and the
    payload; readers (warcio check, fastwarc) verify both in tests/test_warc.py."""
    http.compute_headers_buffer()
    warc_headers["WARC-Payload-Digest"] = sha1_label(payload)
    warc_headers["WARC-Block-Digest"] = sha1_label(http.headers_buff, payload)


@dataclass(frozen=True, slots=True)
class EncodedRecords:
    """The complete records of one fetch, built and gzipped (one member each) where the CPU is to spare: a parse
    process encodes a page's records beside parsing it (the body is there already), so the worker's main process
    only appends bytes. Produced by `encode`, consumed by `WarcWriter.write`."""

    data: bytes
    records: int


WarcItem = WarcExchange | EncodedRecords  # what a batch given to WarcWriter.write holds

_ENCODERS = threading.local()  # one encoder per thread (its buffer is reused), made on first use


def encode(exchanges: Sequence[WarcExchange]) -> EncodedRecords | None:
    """The exchanges' records, ready to append; None when they cannot be built (the writer then encodes the
    exchanges itself, and its error is the one that counts)."""
    encoder: _RecordEncoder | None = getattr(_ENCODERS, "encoder", None)
    if encoder is None:
        encoder = _ENCODERS.encoder = _RecordEncoder()
    try:
        data = b"".join(encoder.exchange(ex) for ex in exchanges)
    except Exception:
        return None
    return EncodedRecords(data, 2 * len(exchanges))


class WarcWriter:
    """Appends records (encoded, or exchanges it encodes) to `DIR/<worker-id>-<n>.warc.gz`, rotating by size.
    Blocking: call from a thread.

    Not thread-safe: one writer per worker process, called by one committer at a time.
    """

    def __init__(
        self, directory: Path, worker_id: str, rotate_bytes: int, software: str, *, fsync: bool = False
    ) -> None:
        if rotate_bytes <= 0:
            raise ValueError("rotate_bytes must be positive")
        if "/" in worker_id or not worker_id:
            raise ValueError(f"worker_id must be a non-empty file name part: {worker_id!r}")
        self.directory = directory
        self.worker_id = worker_id
        self.rotate_bytes = rotate_bytes
        self.software = software
        self.fsync = fsync  # a flush reaches the kernel (survives SIGKILL); fsync also survives power loss
        self.records = 0  # records written by this writer, over all its files
        self.encoded_here = 0  # exchanges it had to encode itself (not encoded by a parse process)
        self.failed = 0  # exchanges whose records could not be built: left out, so that the rest of the batch lands
        self.files: list[Path] = []  # every file this writer created, oldest first
        self._encoder = _RecordEncoder()
        self._fd: int | None = None  # the open file, or None between a rotation (or an abandoned file) and a write
        self._size = 0  # end of the last complete batch in the open file: where a failed write is cut back to
        directory.mkdir(parents=True, exist_ok=True)
        self._open_next()  # fail at start-up, not at the first page, when the directory is unusable

    def __repr__(self) -> str:
        path = self.files[-1] if self.files else None
        return f"WarcWriter({path}, files={len(self.files)}, records={self.records}, bytes={self._size})"

    @property
    def path(self) -> Path | None:
        """The file being written, or None until the next write opens one."""
        return self.files[-1] if self._fd is not None else None

    def stats(self) -> dict[str, int]:
        """For the worker's summary line: files, records, exchanges the writer encoded itself, and exchanges left
        out because their records could not be built (`failed`, each also logged)."""
        return {
            "files": len(self.files),
            "records": self.records,
            "encoded_by_writer": self.encoded_here,
            "failed": self.failed,
        }

    def write(self, batch: Sequence[WarcItem]) -> None:
        """Write a batch (2 records per exchange; encoded records as they are) in one write and flush it, or raise
        WarcWriteError with nothing of it kept. An exchange whose records cannot be built is left out and counted
        (`failed`): one odd response must not stop the commits of every page after it."""
        if not batch:
            return
        records = here = failed = 0
        try:
            blobs = []
            for item in batch:
                if isinstance(item, EncodedRecords):
                    blobs.append(item.data)
                    records += item.records
                    continue
                try:
                    blobs.append(self._encoder.exchange(item))
                except Exception:
                    log.warning("WARC records of %s could not be built; left out", item.url, exc_info=True)
                    failed += 1
                    continue
                records += 2
                here += 1
            if self._fd is None:
                self._open_next()
            assert self._fd is not None
            self._write_all(b"".join(blobs))
            self._sync_and_check()
        except OSError as exc:
            self._roll_back()
            raise WarcWriteError(exc.errno, f"WARC write failed, batch rolled back: {exc}") from exc
        except BaseException:  # a cancellation: still nothing of the batch kept
            self._roll_back()
            raise
        self._size = os.lseek(self._fd, 0, os.SEEK_CUR)
        self.records += records
        self.encoded_here += here
        self.failed += failed
        if self._size >= self.rotate_bytes:
            self._close_fd()

    def close(self) -> None:
        """Flush to disk and close; idempotent. The next write (if any) would open a new file."""
        if self._fd is not None:
            os.fsync(self._fd)
            self._close_fd()

    def __enter__(self) -> WarcWriter:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _next_number(self) -> int:
        name = re.compile(re.escape(self.worker_id) + r"-(\d+)\.warc\.gz")
        taken = [int(m[1]) for p in self.directory.iterdir() if (m := name.fullmatch(p.name))]
        return max(taken, default=0) + 1

    def _open_next(self) -> None:
        """Create the next free file (never an existing one) and write its warcinfo record."""
        n = self._next_number()
        while True:
            path = self.directory / f"{self.worker_id}-{n}.warc.gz"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                break
            except FileExistsError:  # another process with the same worker id took it between listing and open
                n += 1
        self._fd, self._size = fd, 0
        self.files.append(path)
        info = {
            "software": self.software,
            "format": "WARC File Format 1.1",
            "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
            "hostname": socket.gethostname(),
            "isPartOf": self.worker_id,
        }
        try:
            self._write_all(self._encoder.warcinfo(path.name, info))
            self._sync_and_check()
        except OSError:
            self._close_fd()
            path.unlink(missing_ok=True)  # a file without its warcinfo is no use to anyone
            raise
        self._size = os.lseek(fd, 0, os.SEEK_CUR)
        self.records += 1

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _sync_and_check(self) -> None:
        """Raw os.write has no user-space buffer, so the data is in the kernel; check the file is still there."""
        assert self._fd is not None
        if self.fsync:
            os.fsync(self._fd)
        if os.fstat(self._fd).st_nlink == 0:  # unlinked (or its directory removed): writes "succeed" into the void
            raise OSError(errno.ENOENT, "the WARC file was removed while open")

    def _roll_back(self) -> None:
        """Cut the file back to its last complete batch; if even that fails, abandon it for a new file."""
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_nlink == 0:
                raise OSError(errno.ENOENT, "removed")
            os.ftruncate(self._fd, self._size)
            os.lseek(self._fd, self._size, os.SEEK_SET)
        except OSError:
            self._close_fd()  # it may end in a cut record, as after a crash; the next write starts a new file

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):  # closing is best effort; the data was written or rolled back
                os.close(fd)
