"""The sinks under write failures (issue 14): a failed write leaves only complete lines, close never raises.

A full disk is a real file-size limit (RLIMIT_FSIZE, EFBIG) set in a child process, so the test process itself
is never limited; a partial line left by a crash is cut back at open."""

from __future__ import annotations

import json
import multiprocessing
import resource
import signal
from pathlib import Path

from crawler.records import Record
from crawler.sinks import ItemSink, JsonlSink


def record(i: int) -> Record:
    return Record(f"http://h/{i}", None, 200, 0, 0.0, 1, 10, "text/html", "t" * 50, [], None, 1, None)


def _fill_until_refused(directory: str, limit: int, out: multiprocessing.SimpleQueue) -> None:  # type: ignore[type-arg]
    """Child: write records and item blobs under a file-size limit; report what was accepted and what failed."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sink = JsonlSink(Path(directory), "w1", rotate_bytes=1 << 30)
    items = ItemSink(Path(directory), "w1", rotate_bytes=1 << 30)
    written = failed = items_written = 0
    for i in range(200):
        try:
            sink.write([record(i), record(i + 1000)])
            written += 2
        except OSError:
            failed += 1
        try:
            items.write([b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 100), b'{"m":%d}\n' % i])
            items_written += 2
        except OSError:
            pass
    sink.close()  # never raises, even with the limit reached
    items.close()
    out.put((written, failed, items_written))


def test_a_full_disk_never_leaves_a_partial_line(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    q = ctx.SimpleQueue()
    p = ctx.Process(target=_fill_until_refused, args=(str(tmp_path), 5000, q))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    written, failed, items_written = q.get()
    assert failed > 0 and written > 0
    data = (tmp_path / "w1.jsonl").read_bytes()
    assert data.endswith(b"\n") and len(data) <= 5000
    lines = [json.loads(line) for line in data.splitlines()]
    assert len(lines) == written  # every accepted record is there, whole; nothing of a refused batch
    item_data = (tmp_path / "items" / "w1.jsonl").read_bytes()
    assert item_data.endswith(b"\n") and len(item_data.splitlines()) == items_written
    # space is back: a new sink appends after the last complete line
    sink = JsonlSink(tmp_path, "w1", rotate_bytes=1 << 30)
    sink.write([record(9999)])
    sink.close()
    assert json.loads((tmp_path / "w1.jsonl").read_bytes().splitlines()[-1])["url"] == "http://h/9999"


def test_a_line_cut_off_by_a_crash_is_dropped_at_open(tmp_path: Path) -> None:
    (tmp_path / "w1.jsonl").write_bytes(b'{"url":"a"}\n{"url":"b"}\n{"url":"cut of')
    sink = JsonlSink(tmp_path, "w1", rotate_bytes=1 << 30)
    sink.write([record(1)])
    sink.close()
    urls = [json.loads(line)["url"] for line in (tmp_path / "w1.jsonl").read_text().splitlines()]
    assert urls == ["a", "b", "http://h/1"]


def test_the_item_sink_is_created_at_the_first_item_and_rotates(tmp_path: Path) -> None:
    items = ItemSink(tmp_path, "w1", rotate_bytes=100)
    items.write([])
    assert not (tmp_path / "items").exists()
    for i in range(10):
        items.write([b'{"n":%d,"pad":"%s"}\n' % (i, b"y" * 40)])
    items.close()
    items.close()  # twice is fine
    files = sorted((tmp_path / "items").glob("*.jsonl"))
    assert len(files) > 2 and items.items == 10
    got = sorted(json.loads(line)["n"] for f in files for line in f.read_text().splitlines())
    assert got == list(range(10))
