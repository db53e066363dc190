"""Infrastructure faults cost no URL: a gateway outage, a full output disk, the renew race (issue 14).

Real processes throughout: a real forward proxy with basic auth (killed and started again on the same port), a
real tmpfs that fills up, the real worker CLI, the session's real Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crawler.frontier import Frontier
from crawler.metrics import WorkerMetrics
from crawler.proxies import ProxyPool
from crawler.settings import Settings
from crawler.testing.services import RunningServer, free_port, start_server, stop_process, wait_until
from tests.helpers import count_lines, read_records, spawn_crawl, stats, worker_args
from tests.test_stages import frontier_at, seed
from tests.warc_readers import fast_read
from workers.housekeeping import Housekeeping
from workers.leaser import LeaseBook

PROXY_USER, PROXY_PASSWORD = "gwuser", "gw-secret-77"


@pytest.fixture(scope="module")
def hostile() -> Iterator[RunningServer]:
    with start_server("crawler.testing.hostile_server", "--port", 0) as h:
        yield h


def start_proxy(port: int) -> RunningServer:
    return start_server(
        "crawler.testing.proxy_server", "--port", port, "--user", PROXY_USER, "--password", PROXY_PASSWORD
    )


def enqueue_urls(redis_url: str, name: str, tmp_path: Path, urls: list[str]) -> None:
    from tests.helpers import crawl

    f = tmp_path / "seeds.txt"
    f.write_text("\n".join(urls) + "\n")
    run = crawl(["enqueue", str(f), "--redis", redis_url, "--crawl", name])
    assert run.returncode == 0 and f"added={len(urls)} " in run.stdout, run.stdout + run.stderr


def log_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


def messages(log: Path, needle: str) -> list[str]:
    return [str(o.get("message")) for o in log_lines(log) if needle in str(o.get("message", ""))]


@pytest.mark.timeout(180)
def test_a_gateway_outage_dead_letters_nothing_and_fetching_resumes_when_it_returns(
    redis_server: Any, crawl_name: str, tmp_path: Path, hostile: RunningServer
) -> None:
    pages = 600
    urls = [f"{hostile.url}/slow/20?n={i}" for i in range(pages)]
    enqueue_urls(redis_server.url, crawl_name, tmp_path, urls)
    port = free_port()
    proxy = start_proxy(port)
    out, log = tmp_path / "out", tmp_path / "worker.log"
    gateway = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}"
    args = worker_args(redis_server.url, crawl_name, out, "--no-robots", "--no-follow", "--until-idle")
    w = spawn_crawl([*args, "--proxy", gateway, "--concurrency", "32", "--per-host-concurrency", "0"], log=log)
    try:
        wait_until(lambda: count_lines(out) >= 100, timeout_s=60)
        proxy.stop()  # the gateway goes away mid-crawl
        wait_until(lambda: messages(log, "is down"), timeout_s=30)
        # an outage is not the end of the crawl: --until-idle keeps waiting while the gateway is down
        with pytest.raises(TimeoutError):
            wait_until(lambda: w.poll() is not None, timeout_s=6)
        assert stats(redis_server.url, crawl_name)["dead"] == 0
        before = count_lines(out)
        proxy = start_proxy(port)  # back on the same port
        back_at = time.monotonic()
        wait_until(lambda: count_lines(out) > before, timeout_s=30, interval_s=0.05)
        resumed_after_s = time.monotonic() - back_at
        assert w.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if w.poll() is None:
            stop_process(w)
        proxy.stop()
    s = stats(redis_server.url, crawl_name)
    assert (s["dead"], s["done"], s["enqueued"]) == (0, pages, pages), s
    assert {r["url"] for r in read_records(out)} == set(urls)
    assert all(r["error"] is None and r["status"] == 200 for r in read_records(out))
    assert resumed_after_s < 5.0, f"fetching resumed {resumed_after_s:.1f}s after the gateway came back"
    down, back = messages(log, "is down"), messages(log, "is back up")
    assert len(down) == 1 and len(back) == 1, (down, back)
    assert f"http://{PROXY_USER}:***@127.0.0.1:{port}" in down[0] and PROXY_PASSWORD not in log.read_text()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode(errors='replace').strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("warc", [False, True], ids=["records", "records+warc"])
def test_a_full_output_disk_leaves_no_partial_line_no_traceback_and_loses_nothing(
    redis_server: Any, crawl_name: str, tmp_path: Path, hostile: RunningServer, warc: bool
) -> None:
    pages = 400
    urls = [f"{hostile.url}/slow/5?n={i}" for i in range(pages)]
    enqueue_urls(redis_server.url, crawl_name, tmp_path, urls)
    size_kb = 2048 if warc else 512  # room for everything once the filler is gone (the WARC takes ~1 KB a page)
    with small_tmpfs(tmp_path / "disk", f"{size_kb}k") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * ((size_kb - 96) * 1024))  # leave room for about a third of the records
        out, log = disk / "out", tmp_path / "worker.log"
        args = worker_args(redis_server.url, crawl_name, out, "--no-robots", "--no-follow", "--until-idle")
        if warc:  # the WARC files on the same full disk: rolled back to a record boundary, then complete
            args += ["--warc", str(disk / "warc")]
        w = spawn_crawl([*args, "--concurrency", "16", "--per-host-concurrency", "0"], log=log)
        try:
            wait_until(lambda: messages(log, "output disk full"), timeout_s=60)
            for f in out.glob("*.jsonl"):  # no partial line while the disk is full
                assert f.read_bytes().endswith(b"\n")
            assert stats(redis_server.url, crawl_name)["dead"] == 0
            filler.unlink()  # space returns
            assert w.wait(timeout=120) == 0, log.read_text()[-3000:]
        finally:
            if w.poll() is None:
                stop_process(w)
        text = log.read_text()
        records = read_records(out)  # every line parses
        archived = [r for f in sorted((disk / "warc").glob("*.warc.gz")) for r in fast_read(f)] if warc else []
    assert "Traceback" not in text
    if warc:  # every record whole (no cut one in the middle of a file), every page archived at least once
        assert archived and all(r.digests_ok for r in archived)
        assert {r.uri for r in archived if r.type.endswith("response")} == set(urls)
    assert len(messages(log, "output disk full")) >= 1 and messages(log, "output writable again")
    assert {r["url"] for r in records} == set(urls)
    s = stats(redis_server.url, crawl_name)
    assert (s["dead"], s["done"]) == (0, pages), s


def test_renew_reports_only_leases_really_lost(redis_server: Any, crawl_name: str) -> None:
    """Leases acked on the committer's connection while a renew runs are not 'reclaimed by others'."""

    async def main() -> None:
        async with frontier_at(redis_server.url, crawl_name) as f:
            await seed(f, 5)
            leases, _ = await f.lease(5, "t.1", 30)
            book = LeaseBook()
            for ls in leases:
                book.add(ls)
            hk = housekeeping(f, book)
            settling = leases[:3]
            book.settling |= {ls.member for ls in settling}  # their settlement is on its way ...
            await f.ack(settling)  # ... and Redis has applied it before the renew runs
            assert await hk.renew_once() == []
            await f.release([leases[3]])  # really gone while still held and not being settled
            assert await hk.renew_once() == [leases[3]]

    asyncio.run(main())


def housekeeping(f: Frontier, book: LeaseBook) -> Housekeeping:
    said: list[str] = []
    return Housekeeping(
        Settings(), f, book, WorkerMetrics("w"), ProxyPool(()), dict, lambda _o: None, lambda m, _l: said.append(m)
    )


def test_a_replaced_redis_is_noticed_and_the_seen_cache_is_dropped(redis_server: Any, crawl_name: str) -> None:
    async def main() -> None:
        async with frontier_at(redis_server.url, crawl_name) as f:
            replaced: list[bool] = []
            hk = Housekeeping(
                Settings(),
                f,
                LeaseBook(),
                WorkerMetrics("w"),
                ProxyPool(()),
                dict,
                lambda _o: None,
                lambda _m, _l: None,
                lambda: replaced.append(True),
            )
            assert not await hk.check_redis_identity()  # first look: remembered
            assert not await hk.check_redis_identity()  # same server
            hk._run_id = "0" * 40  # as if the previous server had been another one
            assert await hk.check_redis_identity() and replaced == [True]

    asyncio.run(main())
