"""crawler.logs: every JSON line carries ts/level/event/worker, text lines read as sentences, secrets never leave.

Lines are written to a real StringIO and parsed back with the stdlib json module; stdlib logging records and
`warnings.warn` go through the real logging machinery into the handler.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from crawler.logs import EventLog, early_format, install_logging, kv_text, rfc3339_ms
from crawler.metrics import WorkerMetrics

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SECRET = 's3cr"et-pa\\ss'  # quote and backslash: JSON escapes them, so scrubbing after dumps would miss them


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


@pytest.fixture
def root_logging() -> Iterator[None]:
    """install_logging replaces the root logger's handlers: put the test runner's back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def busy_metrics() -> WorkerMetrics:
    m = WorkerMetrics("vm-1")
    for status in (200, 200, 404):
        m.page(status, 100, 5.0, None)
    m.attempt_error("timeout")
    return m


def test_rfc3339_ms_is_utc_with_milliseconds() -> None:
    assert rfc3339_ms(0.0) == "1970-01-01T00:00:00.000Z"
    t = 1796119200.123  # 2026-12-01T10:00:00.123Z
    assert rfc3339_ms(t) == datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + "123Z"


def test_every_json_line_has_ts_level_event_worker() -> None:
    buf = io.StringIO()
    log = EventLog("w-1", "json", buf)
    before = time.time()
    log.say("worker started", concurrency=4)
    log.emit("reclaimed", "warning", requeued=3)
    log.record(busy_metrics().snapshot())
    log.record(busy_metrics().summary())
    got = lines(buf)
    assert [o["event"] for o in got] == ["log", "reclaimed", "throughput", "summary"]
    assert [o["level"] for o in got] == ["info", "warning", "info", "info"]
    for o in got:
        assert list(o)[:4] == ["ts", "level", "event", "worker"] and o["worker"] == "w-1"
        assert isinstance(o["ts"], str) and RFC3339_MS.match(o["ts"])
        parsed = datetime.strptime(o["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        assert before - 0.01 <= parsed <= time.time()
    assert got[0]["message"] == "worker started" and got[0]["concurrency"] == 4


def test_json_keeps_objects_as_objects() -> None:
    buf = io.StringIO()
    EventLog("w", "json", buf).record(busy_metrics().summary())
    (obj,) = lines(buf)
    assert obj["status"] == {"2xx": 2, "4xx": 1} and obj["errors"] == {"timeout": 1}


def test_a_field_cannot_overwrite_the_line_identity() -> None:
    buf = io.StringIO()
    EventLog("real", "json", buf, clock=lambda: 0.0).emit("x", "info", worker="fake", ts="then", level="error")
    (obj,) = lines(buf)
    assert (obj["worker"], obj["ts"], obj["level"]) == ("real", "1970-01-01T00:00:00.000Z", "info")


def test_unknown_level_and_format_are_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        EventLog("w", "json", io.StringIO()).emit("x", "fatal")
    with pytest.raises(ValueError, match="log format"):
        EventLog("w", "yaml")


def test_secrets_are_scrubbed_in_both_formats_even_where_json_would_escape_them() -> None:
    for fmt in ("json", "text"):
        buf = io.StringIO()
        log = EventLog("w", fmt, buf, secrets=[SECRET])
        log.say(f"cannot connect to http://u:{SECRET}@gw:8000", "error", detail={SECRET: [SECRET]})
        out = buf.getvalue()
        assert SECRET not in out and json.dumps(SECRET)[1:-1] not in out
        if fmt == "json":
            (obj,) = lines(buf)
            assert obj["message"] == "cannot connect to http://u:***@gw:8000"
            assert obj["detail"] == {"***": ["***"]}
        else:
            assert out.startswith("[w] error: cannot connect to http://u:***@gw:8000 (detail ***=")


def test_text_lines_read_as_sentences_without_python_reprs() -> None:
    buf = io.StringIO()
    log = EventLog("w-2", "text", buf)
    log.say("worker started")
    log.say("Redis is away", "warning", attempt=2)
    log.emit("reclaimed", "info", requeued=3, errors={"timeout": 2, "dns": 1}, note=None)
    log.record(busy_metrics().summary())
    out = buf.getvalue().splitlines()
    assert out[0] == "[w-2] worker started"
    assert out[1] == "[w-2] warning: Redis is away (attempt=2)"
    assert out[2] == "[w-2] reclaimed requeued=3 errors dns=1 timeout=2 note=-"
    assert "| status 2xx=2 4xx=1 | errors timeout=1 |" in out[3]
    for line in out:
        assert "{" not in line and "'" not in line and "None" not in line


def test_text_throughput_line_is_the_metrics_line_for_this_worker() -> None:
    buf = io.StringIO()
    snap = busy_metrics().snapshot()
    EventLog("vm-1", "text", buf).record(snap)
    line = buf.getvalue().rstrip("\n")
    assert line.startswith("[vm-1] ") and " pages/s (" in line and "| 2xx=2 4xx=1 | err timeout=1 |" in line


def test_kv_text_of_an_empty_mapping_is_a_dash() -> None:
    assert kv_text({"status": {}, "n": 0}) == "status - n=0"


def test_stdlib_logging_and_warnings_come_out_as_json_lines(root_logging: None) -> None:
    buf = io.StringIO()
    log = EventLog("w-3", "json", buf, secrets=[SECRET])
    install_logging(log)
    logging.getLogger("aiohttp.client").warning("proxy %s refused", f"http://u:{SECRET}@gw")
    logging.getLogger("crawl").info("below the threshold: not written")
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        logging.getLogger("crawl.worker").exception("unexpected error processing %s", "http://a/")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    got = lines(buf)
    assert SECRET not in buf.getvalue()
    assert [(o["level"], o["logger"]) for o in got] == [
        ("warning", "aiohttp.client"),
        ("error", "crawl.worker"),
        ("warning", "py.warnings"),
    ]
    assert all(o["event"] == "log" and o["worker"] == "w-3" and RFC3339_MS.match(str(o["ts"])) for o in got)
    assert got[0]["message"] == "proxy http://u:***@gw refused"
    assert "RuntimeError: boom ***" in str(got[1]["exc"])
    assert "old API" in str(got[2]["message"])


def test_install_logging_leaves_one_handler(root_logging: None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=io.StringIO())
    handler = install_logging(EventLog("w", "text", io.StringIO()))
    assert logging.getLogger().handlers == [handler]


@pytest.mark.parametrize(
    ("argv", "env", "want"),
    [
        (["worker", "--log-format", "json"], {}, "json"),
        (["worker", "--log-format=json"], {}, "json"),
        (["worker"], {"CRAWL_LOG_FORMAT": "json"}, "json"),
        (["worker", "--log-format", "text"], {"CRAWL_LOG_FORMAT": "json"}, "text"),
        (["worker", "--log-format"], {}, "text"),
        (["worker"], {"CRAWL_LOG_FORMAT": "xml"}, "text"),
    ],
)
def test_early_format_reads_the_flag_then_the_environment(argv: list[str], env: dict[str, str], want: str) -> None:
    assert early_format(argv, env) == want
