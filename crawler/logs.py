"""The one place a log line is made: every line the worker and the CLI print goes through `EventLog`.

Two formats, chosen by `--log-format`:
- `json`: one compact object per line, always with `ts` (RFC 3339, UTC, milliseconds), `level`, `event` and
  `worker`, then the event's own fields as real JSON values (objects stay objects). A log shipper can parse every
  line of the stream, including warnings from libraries (through `EventLogHandler`) and start-up errors.
- `text`: a line for people. Throughput lines and the summary keep the layout of `crawler.metrics.format_line`;
  other events read `[worker] message` or `[worker] event key=value ...`, never Python dict syntax.

Secrets (proxy and Redis passwords) are scrubbed from every string before it is written, keys included, so a
library error that echoes a URL cannot leak one. Writing is serialised by a lock: the stdlib `logging` module
may call the handler from other threads (the Prometheus server's, for one).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TextIO

from crawler.metrics import format_line
from crawler.redact import scrub

LEVELS: Final = ("debug", "info", "warning", "error")
RESERVED: Final = frozenset({"ts", "level", "event", "worker"})  # set by the log, never by a field
_MAX_DEPTH: Final = 8  # nesting scrubbed; deeper values are rendered as scrubbed text


def rfc3339_ms(epoch_s: float) -> str:
    """`2026-12-01T10:00:00.123Z`: UTC with millisecond precision, the form log stores sort and parse fastest."""
    total_ms = int(epoch_s * 1000 + 1e-3)  # floor to the millisecond; the 1 us absorbs binary float error
    whole, ms = divmod(total_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def level_name(levelno: int) -> str:
    """A stdlib logging level in our four names (CRITICAL is an error, anything below INFO is debug)."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


def kv_text(fields: Mapping[str, Any]) -> str:
    """`key=value` pairs for text lines; a mapping is flattened as `key a=1 b=2`, never `{'a': 1}`."""
    parts: list[str] = []
    for key, value in fields.items():
        if isinstance(value, Mapping):
            inner = " ".join(f"{k}={_scalar(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))
            parts.append(f"{key} {inner or '-'}")
        else:
            parts.append(f"{key}={_scalar(value)}")
    return " ".join(parts)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(_scalar(v) for v in value) or "-"
    return str(value)


class EventLog:
    """Formats and writes the log lines of one process (a worker, or one CLI command).

    `worker` is the worker id (`<hostname>-<pid>` by default); CLI commands pass the command name, e.g. "cli".
    `stream` defaults to stdout, looked up at each write so pytest's capture and redirections keep working.
    """

    def __init__(
        self,
        worker_id: str,
        fmt: str = "text",
        stream: TextIO | None = None,
        secrets: Iterable[str] = (),
        clock: Any = time.time,
    ) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"log format must be text or json, got {fmt!r}")
        self.worker_id = worker_id
        self.fmt = fmt
        self._stream = stream  # None: sys.stdout at write time
        self._secrets = tuple(s for s in secrets if s)  # what scrub() removes from every string
        self._clock = clock  # epoch seconds; a parameter so tests can pin the time
        self._lock = threading.Lock()  # one line at a time from the loop and from logging's threads
        self.lines = 0  # written so far, for __repr__ and tests

    def __repr__(self) -> str:
        return f"EventLog(worker={self.worker_id!r}, fmt={self.fmt}, lines={self.lines})"

    # -- the API the worker and the CLI call -----------------------------------------------------------------
    def emit(self, event: str, level: str = "info", /, **fields: Any) -> None:
        """Write one event. Fields named ts/level/event/worker are ignored (a snapshot may carry `worker`)."""
        self.write(self.render(event, level, fields))

    def say(self, message: str, level: str = "info", /, **fields: Any) -> None:
        """A sentence for people: event `log` with a `message` field (and any extra fields)."""
        self.emit("log", level, message=message, **fields)

    def record(self, obj: Mapping[str, Any]) -> None:
        """Write a dict that names its own event (default `throughput`) and level, e.g. `WorkerMetrics.summary()`."""
        fields = {k: v for k, v in obj.items() if k not in ("event", "level")}
        self.emit(str(obj.get("event", "throughput")), str(obj.get("level", "info")), **fields)

    # -- formatting ------------------------------------------------------------------------------------------
    def render(self, event: str, level: str, fields: Mapping[str, Any]) -> str:
        """The line (without newline) for one event, secrets already scrubbed."""
        if level not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        body = {k: v for k, v in fields.items() if k not in RESERVED}
        if self.fmt == "json":
            head: dict[str, Any] = {
                "ts": rfc3339_ms(self._clock()),
                "level": level,
                "event": event,
                "worker": self.worker_id,
            }
            obj = self._scrubbed({**head, **dict(sorted(body.items()))}, 0)
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)
        return scrub(self._text(event, level, body), self._secrets)

    def _text(self, event: str, level: str, body: dict[str, Any]) -> str:
        if event in ("throughput", "summary"):
            return format_line({"event": event, "worker": self.worker_id, **body}, "text")
        prefix = f"[{self.worker_id}] " + ("" if level in ("info", "debug") else f"{level}: ")
        message = body.pop("message", None)
        rest = kv_text(body)
        if message is not None:
            return prefix + str(message) + (f" ({rest})" if rest else "")
        return prefix + event + (f" {rest}" if rest else "")

    def _scrubbed(self, value: Any, depth: int) -> Any:
        """Scrub every string of a JSON-able value (keys too); the structure is kept, so the line stays JSON."""
        if isinstance(value, str):
            return scrub(value, self._secrets)
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth >= _MAX_DEPTH:
            return scrub(str(value), self._secrets)
        if isinstance(value, Mapping):
            return {scrub(str(k), self._secrets): self._scrubbed(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._scrubbed(v, depth + 1) for v in value]
        return scrub(str(value), self._secrets)

    def write(self, line: str) -> None:
        with self._lock:
            stream = self._stream if self._stream is not None else sys.stdout
            stream.write(line + "\n")
            stream.flush()
            self.lines += 1


class EventLogHandler(logging.Handler):
    """Routes stdlib `logging` records (aiohttp's, asyncio's, ours) into an `EventLog`, as event `log`.

    The record's logger name is a `logger` field; an exception's traceback is an `exc` field (one string, so a
    JSON line stays one line), scrubbed like everything else."""

    def __init__(self, log: EventLog, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.log.say(record.getMessage(), level_name(record.levelno), **fields)
        except Exception:  # logging must never take the process down; the stdlib's own fallback reports it
            self.handleError(record)


def install_logging(log: EventLog, level: int = logging.WARNING) -> EventLogHandler:
    """Make `log` the only output of the stdlib root logger (replaces `logging.basicConfig`); returns the handler.

    Also routes `warnings.warn` through logging, so a library's warning is one line in the same format."""
    handler = EventLogHandler(log, level)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler


def early_format(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The log format asked for, read before the settings are parsed, so a settings error is already in it.

    `--log-format json`, `--log-format=json` or CRAWL_LOG_FORMAT=json; anything else (or nothing) is text."""
    chosen = environ.get("CRAWL_LOG_FORMAT", "text")
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif arg.startswith("--log-format="):
            chosen = arg.split("=", 1)[1]
    return "json" if chosen == "json" else "text"
