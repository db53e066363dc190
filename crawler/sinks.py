"""Result sinks. A line is written and flushed before its URL is acked (at-least-once, nothing lost).

`JsonlSink` writes page records to `<output>/<worker-id>.jsonl`, `ItemSink` the user parser's items to
`<output>/items/<worker-id>.jsonl`, one file of each per worker process, rotated by size to
`<worker-id>.<n>.jsonl`. Their methods are blocking and are called from a thread (`asyncio.to_thread`), so JSON
encoding and disk writes stay off the event loop (items arrive already encoded by the parse pool).

Why the files are written unbuffered, with our own truncation: a write that fails half way (a full disk, EIO)
must not leave a cut-off line that a later write (or a restarted worker) would append after. On OSError the file
is cut back to its last complete line before the error is raised, so the caller can hand the batch's leases
back; a file found ending mid-line at open (a crash mid-write: those URLs were never acked) is cut back too.
`close()` never raises: there is nothing left for its caller to do about a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from crawler.records import Record
from crawler.warc import WarcItem, WarcWriter

_TAIL_CHUNK = 64 * 1024


class _LineFile:
    """An append-only file of complete lines, rotated by size; the common part of the two sinks."""

    def __init__(self, directory: Path, worker_id: str, rotate_bytes: int, fsync: bool, lazy: bool) -> None:
        self.directory = directory
        self.worker_id = worker_id
        self.rotate_bytes = rotate_bytes
        self.fsync = fsync  # flush reaches the kernel at every write (survives SIGKILL); fsync also power loss
        self.path = directory / f"{worker_id}.jsonl"
        self._fd: int | None = None
        self._size = 0  # bytes of complete lines in the file: where a failed write is cut back to
        self._dirty = False  # a failed write could not be cut back yet: retried before the next write
        if not lazy:
            self._open()

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._size = _complete_length(self.path)
            if os.fstat(fd).st_size != self._size:
                os.ftruncate(fd, self._size)  # a line cut off by a crash: its URL was never acked
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _append(self, data: bytes) -> int:
        """Append complete lines and flush them to the kernel (fsync too when asked); all or nothing."""
        if not data:
            return 0
        if self._fd is None:
            self._open()
        elif self._size >= self.rotate_bytes:
            self._rotate()  # before writing, so a rotation error never follows a successful write
        assert self._fd is not None
        try:
            if self._dirty:
                os.ftruncate(self._fd, self._size)
                self._dirty = False
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            self._rollback()
            raise
        self._size += len(data)
        return len(data)

    def _rollback(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._dirty = True

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        n = 1
        while (self.directory / f"{self.worker_id}.{n}.jsonl").exists():
            n += 1
        self.path.rename(self.directory / f"{self.worker_id}.{n}.jsonl")
        self._open()

    def close(self) -> None:
        """fsync and close; never raises (a failure here has nothing left to protect: the lines were flushed)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if self._dirty:
                os.ftruncate(fd, self._size)
            os.fsync(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def _complete_length(path: Path) -> int:
    """Length of `path` up to and including its last newline (0 for an empty file or a single partial line)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - _TAIL_CHUNK)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            pos = start
        return 0


class JsonlSink(_LineFile):
    """Page records, one JSON object per line."""

    def __init__(self, directory: Path, worker_id: str, rotate_bytes: int, fsync: bool = False) -> None:
        super().__init__(directory, worker_id, rotate_bytes, fsync, lazy=False)
        self.records = 0

    def __repr__(self) -> str:
        return f"JsonlSink({self.path}, records={self.records}, bytes={self._size})"

    def write(self, records: Sequence[Record]) -> int:
        """Encode, append and flush a batch; returns bytes written. Blocking: call from a thread. On OSError
        nothing of the batch is in the file."""
        if not records:
            return 0
        data = "".join(
            json.dumps(r.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n" for r in records
        ).encode("utf-8", "surrogatepass")
        n = self._append(data)
        self.records += len(records)
        return n


class ItemSink(_LineFile):
    """The user parser's items: JSONL blobs made by the parse pool (`ParsedPage.items`), written as they are.

    The file (and `<output>/items/`) is created at the first item, so a crawl whose parser yields nothing leaves
    no empty file behind."""

    def __init__(self, output_dir: Path, worker_id: str, rotate_bytes: int, fsync: bool = False) -> None:
        super().__init__(output_dir / "items", worker_id, rotate_bytes, fsync, lazy=True)
        self.items = 0

    def __repr__(self) -> str:
        return f"ItemSink({self.path}, items={self.items}, bytes={self._size})"

    def write(self, blobs: Sequence[bytes]) -> int:
        """Append and flush the blobs (each complete lines); returns bytes written. Blocking: call from a thread.
        On OSError nothing of the batch is in the file."""
        data = b"".join(blobs)
        n = self._append(data)
        self.items += data.count(b"\n")
        return n


class Outputs:
    """Every sink of one worker, written together: records, then the parser's items (then WARC, when set).

    `write` is all or nothing per sink, and raises OSError when any sink fails (a full disk, EIO, a directory
    removed): the caller then hands the batch's leases back; records already written for it become at-least-once
    duplicates, never losses. `probe` tells when writing works again.
    """

    def __init__(self, records: JsonlSink, items: ItemSink | None = None, warc: WarcWriter | None = None) -> None:
        self.records = records
        self.items = items
        self.warc = warc

    def __repr__(self) -> str:
        return f"Outputs({self.records!r}, {self.items!r})"

    @property
    def directories(self) -> list[Path]:
        dirs = [self.records.directory]
        if self.items is not None:
            dirs.append(self.items.directory)
        if self.warc is not None:
            dirs.append(self.warc.directory)
        return dirs

    def write(self, records: Sequence[Record], item_blobs: Sequence[bytes], warc: Sequence[WarcItem] = ()) -> None:
        """Blocking: call from a thread. Flushed (to the kernel) before it returns."""
        if records:
            self.records.write(records)
        if item_blobs and self.items is not None:
            self.items.write(item_blobs)
        if warc and self.warc is not None:
            self.warc.write(warc)

    def probe(self) -> None:
        """Raise OSError unless a small file can be written, flushed and removed in every output directory."""
        for d in self.directories:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".probe-{self.records.worker_id}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"\n" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    probe.unlink()

    def close(self) -> None:
        """Never raises."""
        self.records.close()
        if self.items is not None:
            self.items.close()
        if self.warc is not None:
            with contextlib.suppress(OSError):
                self.warc.close()
