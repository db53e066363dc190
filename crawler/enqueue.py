"""`crawl enqueue`: stream a URL file into the frontier.

The file is read line by line in binary (a 10-million-line file never sits in memory), each line is validated and
normalised, and batches go to Redis as pipelined `add` script calls. A bad line is reported with its line number
and never stops the others.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from crawler.frontier import Frontier
from crawler.urls import MAX_URL_BYTES, InvalidURL, NormalizedURL, normalize

BATCH = 2000  # URLs per script call
PIPELINE_DEPTH = 8  # script calls per round trip
SHOWN_ERRORS = 20


@dataclass(slots=True)
class EnqueueReport:
    added: int = 0
    duplicates: int = 0
    invalid: int = 0
    lines: int = 0
    shown: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"added={self.added} duplicates={self.duplicates} invalid={self.invalid}"


def check_line(raw: bytes, keep_tracking: bool = False) -> NormalizedURL | None:
    """Validate one raw line: None for a blank or comment line, InvalidURL (with the reason) for a bad one."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    raw = raw.rstrip(b"\r\n")
    if len(raw) > MAX_URL_BYTES:
        raise InvalidURL(f"line longer than {MAX_URL_BYTES} bytes ({len(raw)})")
    if b"\x00" in raw:
        raise InvalidURL("NUL byte in line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidURL(f"not valid UTF-8 (byte {exc.start})") from None
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    return normalize(text, keep_tracking=keep_tracking)


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """Lines, with over-long ones cut short so they cannot fill memory (the rest of such a line is skipped)."""
    limit = MAX_URL_BYTES + 2
    while True:
        line = stream.readline(limit)
        if not line:
            return
        if len(line) >= limit and not line.endswith(b"\n"):
            # skip the rest of an over-long line without holding it
            while True:
                more = stream.readline(65536)
                if not more or more.endswith(b"\n"):
                    break
            yield line + b"<truncated>"
            continue
        yield line


async def enqueue_stream(
    frontier: Frontier,
    stream: BinaryIO,
    depth: int = 0,
    front: bool = False,
    keep_tracking: bool = False,
    on_invalid: Callable[[int, str], None] | None = None,
    on_progress: Callable[[EnqueueReport], None] | None = None,
) -> EnqueueReport:
    report = EnqueueReport()
    batch: list[NormalizedURL] = []
    pending = 0
    kinds: list[bool] = []  # per queued command: is its result an add count?
    pipe = frontier.redis.pipeline(transaction=False)
    last_progress = time.monotonic()

    # One pipeline in flight while the next batch is prepared: Redis runs the scripts while Python normalises.
    in_flight: asyncio.Task[None] | None = None

    async def run_pipe(p: Any, ks: list[bool]) -> None:
        results = await p.execute()
        # add script calls return how many were new; the SADDs of seed hosts in between are not counted
        report.added += sum(int(r) for r, is_add in zip(results, ks, strict=True) if is_add)
        await p.reset()

    async def flush_pipe(wait: bool = False) -> None:
        nonlocal pending, pipe, kinds, in_flight
        if in_flight is not None:
            await in_flight
            in_flight = None
        if pending:
            in_flight = asyncio.create_task(run_pipe(pipe, kinds))
            kinds = []
            pending = 0
            pipe = frontier.redis.pipeline(transaction=False)
        if wait and in_flight is not None:
            await in_flight
            in_flight = None

    for lineno, raw in enumerate(_lines(stream), start=1):
        report.lines = lineno
        try:
            n = check_line(raw, keep_tracking)
        except InvalidURL as exc:
            report.invalid += 1
            if on_invalid:
                on_invalid(lineno, str(exc))
            continue
        if n is None:
            continue
        batch.append(n)
        if len(batch) >= BATCH:
            queued = await frontier.add_in(pipe, batch, depth, front, seed=True)
            kinds += queued
            pending += len(queued)
            report.duplicates += len(batch)
            batch = []
            if pending >= 2 * PIPELINE_DEPTH:
                await flush_pipe()
            # let the in-flight pipeline's task write its commands, so Redis works while we normalise
            await asyncio.sleep(0)
            if on_progress and time.monotonic() - last_progress > 0.5:
                last_progress = time.monotonic()
                on_progress(report)
    if batch:
        queued = await frontier.add_in(pipe, batch, depth, front, seed=True)
        kinds += queued
        pending += len(queued)
        report.duplicates += len(batch)
    await flush_pipe(wait=True)
    await pipe.reset()  # type: ignore[no-untyped-call]
    report.duplicates -= report.added  # every valid URL was either added or a duplicate
    return report


class InvalidLinePrinter:
    """Prints the first SHOWN_ERRORS invalid lines in full on stderr, then only counts them."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.count = 0

    def __call__(self, lineno: int, reason: str) -> None:
        self.count += 1
        if self.count <= SHOWN_ERRORS:
            print(f"{self.source}:{lineno}: invalid URL: {reason}", file=sys.stderr)

    def finish(self) -> None:
        if self.count > SHOWN_ERRORS:
            print(f"... and {self.count - SHOWN_ERRORS} more invalid lines", file=sys.stderr)
