"""`crawl enqueue`: stream a URL file into the frontier.

The file is read line by line in binary (a 10-million-line file never sits in memory), each line is validated and
parsed, and batches go to Redis as pipelined `add` script calls. A bad line is reported with its line number
and never stops the others.

A line is a URL, or a JSON object for a URL with what travels with it (both kinds may be mixed in one file):

    {"url": "https://shop.example/c/1", "data": {"category": "books"}, "priority": "high", "label": "listing"}

`data` is a JSON object of at most 8 KiB serialised, `priority` "high" (the head of the host's queue), "normal"
or an integer (> 0 is high), `label` the parser function to call, `kind` what the URL is ("sitemap"), `headers`
extra request headers, `every` a period (`"6h"`, `"30m"`, or seconds) after which the URL is fetched again, and
again (crawler/schedule.py; `--every` sets it for every line). A line without those fields costs Redis nothing
more than a plain URL line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

from crawler.entries import Extras, InvalidExtras, entry
from crawler.frontier import Frontier
from crawler.schedule import InvalidDuration, parse_duration, recur_tail
from crawler.urls import MAX_URL_BYTES, CrawlURL, InvalidURL, crawl_url

BATCH = 2000  # lines per chunk: one script call
PIPELINE_DEPTH = 8  # script calls per round trip
IN_PROCESS_CHUNKS = 4  # files up to this many chunks are normalised here: a helper process costs ~0.1 s to start
CHUNKS_AHEAD = 6  # chunks handed to the helper process before we wait for the oldest: bounds memory
SHOWN_ERRORS = 20
MAX_LINE_BYTES = 64 * 1024  # a JSON line: a URL, 8 KiB of data (escaped in the file, so it may be longer), fields
_FIELDS = frozenset({"url", "data", "priority", "label", "kind", "headers", "every"})


class InvalidLine(ValueError):
    """A line that is no URL and no valid JSON line; the message says why."""


class Seed(NamedTuple):
    """One valid line: the URL, the extras JSON to store after it ("" for none), and its priority (a tuple:
    one is made per line of a file of millions)."""

    url: CrawlURL
    extras: str = ""
    front: bool | None = None  # None: the file's default (`--priority`)
    every_s: int | None = None  # None: the file's default (`--every`, or not recurring)


@dataclass(slots=True)
class EnqueueReport:
    added: int = 0
    duplicates: int = 0
    invalid: int = 0
    lines: int = 0
    shown: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"added={self.added} duplicates={self.duplicates} invalid={self.invalid}"


def check_line(raw: bytes, keep_tracking: bool = False) -> Seed | None:
    """Validate one raw line: None for a blank or comment line, InvalidURL or InvalidLine (with the reason) for a
    bad one."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    raw = raw.rstrip(b"\r\n")
    if len(raw) > MAX_URL_BYTES:
        limit = MAX_LINE_BYTES if raw.lstrip().startswith(b"{") else MAX_URL_BYTES
        if len(raw) > limit:
            raise InvalidURL(f"line longer than {limit} bytes ({len(raw)})")
    if b"\x00" in raw:
        raise InvalidURL("NUL byte in line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidURL(f"not valid UTF-8 (byte {exc.start})") from None
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("{"):
        return _json_line(text, keep_tracking)
    return Seed(crawl_url(text, keep_tracking=keep_tracking))


def _json_line(text: str, keep_tracking: bool) -> Seed:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise InvalidLine(f"bad JSON ({exc})") from None
    unknown = set(obj) - _FIELDS
    if unknown:
        raise InvalidLine(f"unknown field {sorted(unknown)[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    url = obj.get("url")
    if not isinstance(url, str):
        raise InvalidLine('"url" must be a string')
    front = _priority(obj.get("priority"))
    try:
        extras = Extras(obj.get("data"), obj.get("label"), obj.get("headers"), obj.get("kind")).encode()
        every = None if obj.get("every") is None else parse_duration(obj["every"])
    except (InvalidExtras, InvalidDuration) as exc:
        raise InvalidLine(f"every: {exc}" if isinstance(exc, InvalidDuration) else str(exc)) from None
    return Seed(crawl_url(url.strip(), keep_tracking=keep_tracking), extras, front, every)


def _priority(value: Any) -> bool | None:
    """The queue end a JSON line asks for: "high" or an integer > 0 the head, "normal" or <= 0 the tail."""
    if value is None:
        return None
    if value in ("high", "normal"):
        return bool(value == "high")
    if isinstance(value, int) and not isinstance(value, bool):
        return value > 0
    raise InvalidLine(f'priority must be "high", "normal" or an integer, not {value!r}')


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """Lines, with over-long ones cut short so they cannot fill memory (the rest of such a line is skipped)."""
    limit = MAX_LINE_BYTES + 2
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


@dataclass(slots=True)
class Chunk:
    """A run of lines, parsed: what one `add` script call needs, plus the bad lines to report.

    `entries` take the file's priority (`--priority`), in file order; `flipped_entries` are the JSON lines that
    asked for the other one (rare: then the chunk takes two calls)."""

    fingerprints: bytes = b""
    entries: list[str] = field(default_factory=list)
    flipped_fingerprints: bytes = b""
    flipped_entries: list[str] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line number, "invalid URL: why")


def normalize_chunk(
    lines: list[bytes],
    first_lineno: int,
    depth: int,
    keep_tracking: bool,
    front: bool = False,
    every_s: int | None = None,
) -> Chunk:
    """Top level and picklable: runs in a helper process for big files, so Redis and Python work in parallel.

    `every_s` makes every URL of the chunk recur (a JSON line's own `every` wins)."""
    out = Chunk()
    fps: list[bytes] = []
    flipped: list[bytes] = []
    for offset, raw in enumerate(lines):
        try:
            seed = check_line(raw, keep_tracking)
        except InvalidURL as exc:
            out.invalid.append((first_lineno + offset, f"invalid URL: {exc}"))
            continue
        except InvalidLine as exc:
            out.invalid.append((first_lineno + offset, f"invalid line: {exc}"))
            continue
        if seed is None:
            continue
        every = seed.every_s or every_s
        text = entry(seed.url.url, depth, 0, seed.extras) + (recur_tail(every) if every else "")
        if seed.front is None or seed.front == front:
            fps.append(seed.url.fingerprint)
            out.entries.append(text)
        else:
            flipped.append(seed.url.fingerprint)
            out.flipped_entries.append(text)
        out.hosts.add(seed.url.host)
    out.fingerprints = b"".join(fps)
    out.flipped_fingerprints = b"".join(flipped)
    return out


def _chunks(stream: BinaryIO) -> Iterator[tuple[list[bytes], int]]:
    lines: list[bytes] = []
    first = 1
    for lineno, raw in enumerate(_lines(stream), start=1):
        lines.append(raw)
        if len(lines) >= BATCH:
            yield lines, first
            lines, first = [], lineno + 1
    if lines:
        yield lines, first


class _Sender:
    """The Redis side of an enqueue: queues each chunk's add calls on a pipeline, and sends a pipeline once it
    holds 2 * PIPELINE_DEPTH commands, with one pipeline in flight while the next fills."""

    def __init__(
        self,
        frontier: Frontier,
        front: bool,
        on_invalid: Callable[[int, str], None] | None,
        on_progress: Callable[[EnqueueReport], None] | None,
    ) -> None:
        self.frontier = frontier
        self.front = front  # the file's priority (`--priority high`: the head of the queues)
        self.on_invalid = on_invalid
        self.on_progress = on_progress
        self.report = EnqueueReport()
        self.pipe = frontier.redis.pipeline(transaction=False)
        self.kinds: list[bool] = []  # per queued command: is its result an add count?
        self.in_flight: asyncio.Task[None] | None = None  # the pipeline sent and not yet answered
        self.last_progress = time.monotonic()

    async def _run_pipe(self, pipe: Any, kinds: list[bool]) -> None:
        results = await pipe.execute()
        # add script calls return how many were new; the SADDs of seed hosts in between are not counted
        self.report.added += sum(int(r) for r, is_add in zip(results, kinds, strict=True) if is_add)
        await pipe.reset()

    async def flush(self, wait: bool = False) -> None:
        if self.in_flight is not None:
            await self.in_flight
            self.in_flight = None
        if self.kinds:
            self.in_flight = asyncio.create_task(self._run_pipe(self.pipe, self.kinds))
            self.kinds = []
            self.pipe = self.frontier.redis.pipeline(transaction=False)
            await asyncio.sleep(0)  # let it write its commands now, so Redis works while we go on
        if wait and self.in_flight is not None:
            await self.in_flight
            self.in_flight = None

    async def take(self, chunk: Chunk) -> None:
        report = self.report
        for lineno, reason in chunk.invalid:
            report.invalid += 1
            if self.on_invalid:
                self.on_invalid(lineno, reason)
        seed = True  # the chunk's hosts are recorded with its first add call
        for fps, entries, at_front in (
            (chunk.fingerprints, chunk.entries, self.front),
            (chunk.flipped_fingerprints, chunk.flipped_entries, not self.front),
        ):
            if entries:
                joined = "\n".join(entries)
                self.kinds += await self.frontier.add_prepared_in(self.pipe, fps, joined, chunk.hosts, at_front, seed)
                report.duplicates += len(entries)
                seed = False
        if len(self.kinds) >= 2 * PIPELINE_DEPTH:
            await self.flush()
        if self.on_progress and time.monotonic() - self.last_progress > 0.5:
            self.last_progress = time.monotonic()
            self.on_progress(report)

    async def close(self) -> None:
        await self.pipe.reset()  # type: ignore[no-untyped-call]


async def enqueue_stream(
    frontier: Frontier,
    stream: BinaryIO,
    depth: int = 0,
    front: bool = False,
    keep_tracking: bool = False,
    on_invalid: Callable[[int, str], None] | None = None,
    on_progress: Callable[[EnqueueReport], None] | None = None,
    every_s: int | None = None,
) -> EnqueueReport:
    """Stream `stream` into the frontier; memory is bounded by a few chunks whatever the file's size.

    With `every_s`, each URL recurs: due again that long (jittered) after each fetch. A URL already seen in the
    crawl is a duplicate either way (dedup is crawl-wide); it does not become recurring.

    Past the first few chunks, lines are parsed in a helper process (a bounded window of chunks ahead) while
    this process pipelines the prepared chunks to Redis, one pipeline in flight: the three run in parallel.
    """
    sender = _Sender(frontier, front, on_invalid, on_progress)
    loop = asyncio.get_running_loop()
    pool: ProcessPoolExecutor | None = None
    ahead: deque[asyncio.Future[Chunk]] = deque()  # chunks being parsed, in file order
    try:
        for n, (lines, first) in enumerate(_chunks(stream)):
            sender.report.lines = first + len(lines) - 1
            if n < IN_PROCESS_CHUNKS:  # a small file: no helper process to start
                await sender.take(normalize_chunk(lines, first, depth, keep_tracking, front, every_s))
                continue
            if pool is None:
                pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
            ahead.append(
                loop.run_in_executor(pool, normalize_chunk, lines, first, depth, keep_tracking, front, every_s)
            )
            while len(ahead) >= CHUNKS_AHEAD or (ahead and ahead[0].done()):
                await sender.take(await ahead.popleft())
        while ahead:
            await sender.take(await ahead.popleft())
        await sender.flush(wait=True)
    finally:
        for fut in ahead:
            fut.cancel()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        await sender.close()
    report = sender.report
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
            print(f"{self.source}:{lineno}: {reason}", file=sys.stderr)

    def finish(self) -> None:
        if self.count > SHOWN_ERRORS:
            print(f"... and {self.count - SHOWN_ERRORS} more invalid lines", file=sys.stderr)


class EnqueueProgress:
    """A rich progress bar on a terminal (bytes of the file read, lines, URLs added); nothing when piped.

    Its last frame is drawn from the final report, so it never shows a stale count."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._bar: Any = None
        self._task: Any = None
        self._total: int | None = None
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a pipe, an in-memory stream: no total
            self._total = os.fstat(stream.fileno()).st_size or None

    async def __aenter__(self) -> EnqueueProgress:
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("enqueue"),
                BarColumn(),
                TextColumn("{task.fields[lines]:,} lines, {task.fields[added]:,} added"),
                TimeElapsedColumn(),
                transient=False,
                console=None,
            )
            self._bar.start()
            self._task = self._bar.add_task("enqueue", total=self._total, lines=0, added=0)
        return self

    def __call__(self, report: Any) -> None:
        if self._bar is not None:
            pos = self._position()
            self._bar.update(self._task, completed=pos, lines=report.lines, added=report.added)

    def _position(self) -> int | None:
        try:
            return int(self._stream.tell())
        except (OSError, ValueError, AttributeError):
            return None

    async def __aexit__(self, *exc: object) -> None:
        if self._bar is not None:
            if self._total is not None:
                self._bar.update(self._task, completed=self._total)
            self._bar.stop()
