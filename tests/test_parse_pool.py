"""The parse pool's wall around user code, with real parse processes: a hung parser is killed by PID and its
process replaced, its batch-mates are parsed again, a crash costs one page, a parser that cannot load stops the
start, and the byte budget still bounds the backlog."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from pathlib import Path

import pytest

from crawler.errors import ConfigError
from crawler.parse import ParsedPage, ParseTask
from workers.parse_pool import PARSE_NICE, ParsePool

PARSER = textwrap.dedent(
    """
    import os, time

    def parse(page):
        if page.label == "hang":
            while True:  # pure Python, holding the GIL: only a kill stops it
                pass
        if page.label == "sleep":
            time.sleep(3600)
        if page.label == "crash":
            os._exit(3)
        return {"n": page.data["n"], "pid": os.getpid()}
    """
)


def tasks(labels: dict[int, str], n: int) -> list[ParseTask]:
    return [
        ParseTask(
            body=f"<title>{i}</title>".encode(),
            url=f"http://h.test/{i}",
            final_url=f"http://h.test/{i}",
            data={"n": i},
            label=labels.get(i),
            parser_spec=PARSER_SPEC,
        )
        for i in range(n)
    ]


PARSER_SPEC = ""


@pytest.fixture(autouse=True)
def parser_file(tmp_path: Path) -> None:
    global PARSER_SPEC
    f = tmp_path / "user_parser.py"
    f.write_text(PARSER)
    PARSER_SPEC = f"{f}:parse"


def item(page: ParsedPage) -> dict[str, int]:
    data: dict[str, int] = json.loads(page.items)
    return data


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def run_batch(pool: ParsePool, labels: dict[int, str], n: int) -> list[ParsedPage]:
    """Page 0 goes alone to the idle process; the rest gather behind it into one batch."""
    return await asyncio.wait_for(asyncio.gather(*(pool.parse(t) for t in tasks(labels, n))), 30)


@pytest.mark.parametrize("label", ["hang", "sleep"])
def test_a_hung_parser_is_killed_its_page_timed_out_and_its_batch_mates_parsed_again(label: str) -> None:
    async def main() -> None:
        pool = ParsePool(1, 1 << 24, batch_max=16, parser_spec=PARSER_SPEC, timeout_s=1.0)
        try:
            await pool.warm_up()
            first = await pool.parse(tasks({}, 1)[0])
            old_pid = item(first)["pid"]
            pages = await run_batch(pool, {5: label}, 10)
            assert pages[5].error == "parse_timeout" and pages[5].items == b""
            assert "--parse-timeout" in (pages[5].parser_error_detail or "")
            for i, p in enumerate(pages):
                if i != 5:
                    assert p.error is None and item(p)["n"] == i, (i, p)
            new_pids = {item(p)["pid"] for i, p in enumerate(pages) if i > 5}
            assert len(new_pids) == 1 and old_pid not in new_pids  # pages after the hung one: a new process
            assert not alive(old_pid)  # killed by PID and reaped
            assert pool.timeouts == 1 and pool.restarts == 1 and pool.backlog == 0
            after = await pool.parse(tasks({}, 1)[0])  # the pool goes on
            assert after.error is None
        finally:
            pool.close()

    asyncio.run(main())


def test_a_crash_costs_the_page_it_was_on_and_nothing_else() -> None:
    async def main() -> None:
        pool = ParsePool(2, 1 << 24, batch_max=16, parser_spec=PARSER_SPEC, timeout_s=10.0)
        try:
            await pool.warm_up()
            pages = await run_batch(pool, {3: "crash", 7: "crash"}, 12)
            assert [i for i, p in enumerate(pages) if p.error] == [3, 7]
            assert {pages[3].error, pages[7].error} == {"parser_crashed"}
            assert all(item(p)["n"] == i for i, p in enumerate(pages) if i not in (3, 7))
            assert pool.crashes == 2 and pool.timeouts == 0
        finally:
            pool.close()

    asyncio.run(main())


def test_a_parser_that_cannot_load_in_the_pool_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise ImportError('missing dependency')\n")

    async def main() -> None:
        pool = ParsePool(1, 1 << 24, parser_spec=f"{bad}:parse")
        try:
            with pytest.raises(ConfigError, match="ImportError: missing dependency"):
                await asyncio.wait_for(pool.warm_up(), 30)
        finally:
            pool.close()

    asyncio.run(main())


def test_close_kills_a_busy_process_and_returns() -> None:
    async def main() -> int:
        pool = ParsePool(1, 1 << 24, parser_spec=PARSER_SPEC, timeout_s=600.0)
        await pool.warm_up()
        first = await pool.parse(tasks({}, 1)[0])
        hung = asyncio.ensure_future(pool.parse(tasks({0: "hang"}, 1)[0]))
        await asyncio.sleep(0)  # let it reach the pool (a scheduling step, not a wait for time)
        pool.close()
        hung.cancel()
        return item(first)["pid"]

    pid = asyncio.run(main())
    assert not alive(pid)


def test_the_backlog_is_bounded_in_bytes() -> None:
    async def main() -> None:
        pool = ParsePool(1, 10_000, parser_spec=None, timeout_s=5.0)
        try:
            await pool.warm_up()
            big = [ParseTask(body=b"<p>" + b"x" * 4000, url="http://h.test/", final_url="http://h.test/")] * 20
            peak = 0

            async def one(t: ParseTask) -> ParsedPage:
                nonlocal peak
                page = await pool.parse(t)
                peak = max(peak, pool.backlog)
                return page

            pages = await asyncio.gather(*(one(t) for t in big))
            assert all(p.error is None for p in pages) and peak <= 10_000 and pool.backlog == 0
        finally:
            pool.close()

    asyncio.run(main())


def test_a_module_parser_loads_in_the_parse_processes_and_batches_stay_batched() -> None:
    """`module:function` from the working directory (the repo root here), as a worker started there loads it."""
    from examples.bookshop import site

    book = next(b for b in site.CATALOGUE if not b.removed)
    status, body = site.render(book.path)
    url = "http://shop.test" + book.path

    async def main() -> list[ParsedPage]:
        pool = ParsePool(1, 1 << 24, batch_max=64, parser_spec="examples.bookshop.parser:router")
        try:
            await pool.warm_up()
            t = ParseTask(
                body=body, url=url, final_url=url, status=status, label="product", parser_spec=pool.parser_spec
            )
            pages = await asyncio.wait_for(asyncio.gather(*(pool.parse(t) for _ in range(200))), 30)
            assert pool.batches < 20  # one message per batch, not per page
            return pages
        finally:
            pool.close()

    pages = asyncio.run(main())
    assert {json.loads(p.items)["sku"] for p in pages} == {book.slug}


def test_parse_processes_run_nicer_than_the_worker() -> None:
    """When cores are contended, the event loop goes first: the parse processes are PARSE_NICE nicer."""

    async def main() -> None:
        pool = ParsePool(1, 1 << 24, parser_spec=PARSER_SPEC, timeout_s=10.0)
        try:
            page = await asyncio.wait_for(pool.parse(tasks({}, 1)[0]), 30)
            pid = item(page)["pid"]
            assert pid != os.getpid()
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + PARSE_NICE)
        finally:
            pool.close()

    asyncio.run(main())
