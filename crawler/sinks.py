"""Result sinks. A record is written and flushed before its URL is acked (at-least-once, nothing lost).

`JsonlSink` writes `<worker-id>.jsonl` in the output directory, one per worker process, and rotates by size
to `<worker-id>.<n>.jsonl`. Its methods are blocking and are called from a thread (`asyncio.to_thread`), so
JSON encoding and disk writes stay off the event loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from crawler.records import Record


class JsonlSink:
    def __init__(self, directory: Path, worker_id: str, rotate_bytes: int, fsync: bool = False) -> None:
        self.directory = directory
        self.worker_id = worker_id
        self.rotate_bytes = rotate_bytes
        self.fsync = fsync  # flush() reaches the kernel (survives SIGKILL); fsync also survives power loss
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{worker_id}.jsonl"
        self._file: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 - long-lived, closed in close()
        self._size = self._file.tell()
        self.records = 0

    def __repr__(self) -> str:
        return f"JsonlSink({self.path}, records={self.records}, bytes={self._size})"

    def write(self, records: Sequence[Record]) -> int:
        """Encode, append and flush a batch; returns bytes written. Blocking: call from a thread."""
        if not records:
            return 0
        data = "".join(
            json.dumps(r.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n" for r in records
        ).encode("utf-8", "surrogatepass")
        self._file.write(data)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._size += len(data)
        self.records += len(records)
        if self._size >= self.rotate_bytes:
            self._rotate()
        return len(data)

    def _rotate(self) -> None:
        self._file.close()
        n = 1
        while (self.directory / f"{self.worker_id}.{n}.jsonl").exists():
            n += 1
        self.path.rename(self.directory / f"{self.worker_id}.{n}.jsonl")
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
