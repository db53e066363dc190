#!/usr/bin/env python3
"""The floor for the benchmark: a bare aiohttp + selectolax crawl loop, nothing else.

An in-memory queue and seen-set, N fetch tasks sharing one aiohttp session through the proxy, parsing either in
a ProcessPoolExecutor (`--parse pool`, the stack's real limit on several cores) or on the event loop
(`--parse inline`, for reference). Per page it does what `crawl` must also do: fetch, decode, parse the HTML,
take the title and the links, resolve and normalise them (drop the fragment, sort the query), keep the
same-origin ones not seen before, and write one JSON line. Connection errors are retried at once (`--retries`).
No robots, no persistence, no limits, no politeness: whatever `crawl` spends beyond this is the price of its
guarantees.

    python scripts/bare_loop.py http://127.0.0.1:8080/p/0.html --proxy http://u:p@127.0.0.1:3128 \
        --concurrency 256 --parse pool --output out.jsonl

Prints one JSON summary line (`{"event": "summary", ...}`) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from selectolax.lexbor import LexborHTMLParser


def normalise(href: str, base: str) -> str | None:
    """Absolute, fragment-free, query sorted by key; None for non-http(s) links."""
    try:
        p = urlsplit(urljoin(base, href.strip()))
    except ValueError:
        return None
    if p.scheme not in ("http", "https") or not p.netloc:
        return None
    query = "&".join(sorted((x for x in p.query.split("&") if x), key=lambda kv: kv.split("=", 1)[0]))
    return urlunsplit((p.scheme, p.netloc.lower(), p.path or "/", query, ""))


def parse(body: bytes, url: str, origin: str) -> tuple[str | None, list[str]]:
    """(title, distinct same-origin links); top level so the process pool can pickle it."""
    tree = LexborHTMLParser(body.decode("utf-8", "replace"))
    node = tree.css_first("title")
    title = node.text(strip=True) if node is not None else None
    seen: set[str] = set()
    links: list[str] = []
    for a in tree.css("a[href]"):
        href = a.attributes.get("href")
        if not href or href.startswith(("#", "mailto:", "javascript:")):
            continue
        n = normalise(href, url)
        if n is not None and n not in seen:
            seen.add(n)
            if n.startswith(origin):
                links.append(n)
    return title, links


def _warm() -> int:
    return 0


async def watch_lag(lags: list[float], interval_s: float = 0.05) -> None:
    """How late a 50 ms sleep wakes up: the same event-loop lag probe as crawl's (crawler/metrics.py)."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(interval_s)
        lags.append(max(0.0, (loop.time() - t0 - interval_s) * 1000))


async def crawl(args: argparse.Namespace) -> dict[str, object]:
    start = normalise(args.start, args.start)
    assert start is not None
    p = urlsplit(start)
    origin = f"{p.scheme}://{p.netloc}/"
    queue: asyncio.Queue[str] = asyncio.Queue()
    seen = {start}
    queue.put_nowait(start)
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    retries = 0
    out = open(args.output, "w", encoding="utf-8")  # noqa: SIM115, ASYNC230 - once, before the crawl starts
    pool = ProcessPoolExecutor(args.parse_workers) if args.parse == "pool" else None
    loop = asyncio.get_running_loop()
    if pool is not None:
        await asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(args.parse_workers)))
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=0)
    lags: list[float] = []
    lag_task = asyncio.create_task(watch_lag(lags))
    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def fetch(url: str) -> tuple[int, bool, bytes]:
            """(status, is_html, body); a connection error is retried at once, up to --retries times (the proxy
            closes connections after each response, so a reused one is sometimes already gone)."""
            nonlocal retries
            for attempt in range(args.retries + 1):
                try:
                    async with session.get(url, proxy=args.proxy) as resp:
                        return resp.status, resp.content_type == "text/html", await resp.read()
                except (TimeoutError, aiohttp.ClientError):
                    if attempt == args.retries:
                        raise
                    retries += 1
            raise AssertionError("unreachable")

        async def worker() -> None:
            while True:
                url = await queue.get()
                try:
                    status, html, body = await fetch(url)
                    title, links = None, []
                    if html and body:
                        if pool is not None:
                            title, links = await loop.run_in_executor(pool, parse, body, url, origin)
                        else:
                            title, links = parse(body, url, origin)
                    for link in links:
                        if link not in seen:
                            seen.add(link)
                            queue.put_nowait(link)
                    statuses[status] += 1
                    out.write(
                        json.dumps({"url": url, "status": status, "title": title, "links": links}, ensure_ascii=False)
                        + "\n"
                    )
                except (TimeoutError, aiohttp.ClientError) as exc:
                    errors[type(exc).__name__] += 1
                finally:
                    queue.task_done()

        tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
        await queue.join()
        elapsed = time.monotonic() - t0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lag_task.cancel()
    out.close()
    if pool is not None:
        pool.shutdown()
    pages = sum(statuses.values())
    lags.sort()
    lag_p99 = lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))] if lags else None
    return {
        "event": "summary",
        "pages": pages,
        "elapsed_s": round(elapsed, 3),
        "loop_lag_p99_ms": lag_p99,
        "pages_per_s": round(pages / elapsed, 1),
        "statuses": dict(statuses),
        "errors": dict(errors),
        "retries": retries,
        "parse": args.parse,
        "concurrency": args.concurrency,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("start")
    ap.add_argument("--proxy", default=None)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--parse", choices=("pool", "inline"), default="pool")
    ap.add_argument("--retries", type=int, default=3, help="immediate retries of a connection error")
    ap.add_argument("--parse-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--output", default="bare-out.jsonl")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    summary = runner(crawl(args))
    print(json.dumps(summary), flush=True)
    return 0 if not summary["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
