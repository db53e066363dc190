"""One polite host for `scripts/bench_per_host.py`: every page is answered after a fixed delay, and the server
measures its own concurrency so a run can show the server was not the bottleneck.

Why its own server: the per-host question is "how many of the 8 host slots are busy fetching", so the site must
answer in a known time whatever the load (a sleeping handler, not a CPU-bound one), and must report how many
requests it actually had in flight: if the crawler keeps 8 slots busy the server sees ~8 in flight on average; if it
sees ~4, the slots sit idle between fetches (the issue-12 finding). A saturated server would show instead as a
mean handling time well above the delay, and as CPU near one core (the harness samples that).

Run as ``python -m benchkit.delay_server --port 0 --delay-ms D --pages N [--links K] [--page-kb KB]`` (scripts/
on ``PYTHONPATH``); prints ``READY http://127.0.0.1:PORT``. Pages are ``/u/<i>`` (0 <= i < N), each with a title,
an ``<h1>``, filler up to ``--page-kb`` KiB and ``--links`` links to other pages of the set (all seeded, so they
only exercise the dedup path). ``/robots.txt`` is a 404 without delay. ``GET /__stats`` returns the counters since
the last ``GET /__stats?reset=1`` (which returns them and starts a new window):
``{"requests", "in_flight_max", "busy_s", "window_s", "mean_in_flight", "handle_ms_mean", "delay_ms", "pid"}``;
``mean_in_flight`` is busy time over the window from the first request's start to the last one's end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from crawler.testing.serving import bind_socket, run_prefork

FILLER = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "


@dataclass(slots=True)
class Window:
    """Counters of one measuring window: mutable, owned by the one event loop of the server process."""

    requests: int = 0
    in_flight: int = 0
    in_flight_max: int = 0
    busy_s: float = 0.0  # sum over page requests of their handling time
    first_start: float | None = None
    last_end: float | None = None

    def report(self, delay_ms: float) -> dict[str, Any]:
        window = (self.last_end - self.first_start) if self.first_start and self.last_end else 0.0
        return {
            "requests": self.requests,
            "in_flight_max": self.in_flight_max,
            "busy_s": round(self.busy_s, 3),
            "window_s": round(window, 3),
            "mean_in_flight": round(self.busy_s / window, 2) if window > 0 else None,
            "handle_ms_mean": round(self.busy_s * 1000 / self.requests, 3) if self.requests else None,
            "delay_ms": delay_ms,
            "pid": os.getpid(),
        }


def render(i: int, pages: int, links: int, page_kb: int) -> bytes:
    hrefs = "".join(f'<li><a href="/u/{(i * 7 + 13 * j + 1) % pages}">next {j}</a></li>' for j in range(links))
    filler = (FILLER * (page_kb * 1024 // len(FILLER) + 1))[: page_kb * 1024]
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Page {i}</title></head>"
        f"<body><h1>Page {i}</h1><ul>{hrefs}</ul><p>{filler}</p></body></html>"
    ).encode()


def make_app(delay_ms: float, pages: int, links: int, page_kb: int) -> web.Application:
    """The host as an aiohttp app; bodies are rendered once up front so a request costs a sleep and a write."""
    bodies = [render(i, pages, links, page_kb) for i in range(pages)]
    delay_s = delay_ms / 1000
    state = {"w": Window()}

    async def page(request: web.Request) -> web.Response:
        w = state["w"]
        start = time.monotonic()
        w.requests += 1
        w.in_flight += 1
        w.in_flight_max = max(w.in_flight_max, w.in_flight)
        if w.first_start is None:
            w.first_start = start
        try:
            index = int(request.match_info["i"])
            await asyncio.sleep(delay_s)
            if not 0 <= index < pages:
                return web.Response(status=404, text="no such page")
            return web.Response(body=bodies[index], content_type="text/html", charset="utf-8")
        finally:
            w.in_flight -= 1
            end = time.monotonic()
            w.busy_s += end - start
            w.last_end = end

    async def stats(request: web.Request) -> web.Response:
        body = state["w"].report(delay_ms)
        if request.query.get("reset"):
            state["w"] = Window()
        return web.json_response(body)

    async def robots(_request: web.Request) -> web.Response:
        return web.Response(status=404, text="no robots.txt")

    app = web.Application()
    app.router.add_get("/u/{i:\\d+}", page)
    app.router.add_get("/__stats", stats)
    app.router.add_get("/robots.txt", robots)
    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="One host answering every page after a fixed delay.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--pages", type=int, required=True)
    ap.add_argument("--links", type=int, default=3)
    ap.add_argument("--page-kb", type=int, default=8)
    args = ap.parse_args(argv)
    sock = bind_socket("127.0.0.1", args.port)
    return run_prefork(lambda: make_app(args.delay_ms, args.pages, args.links, args.page_kb), sock, None, 1)


if __name__ == "__main__":
    sys.exit(main())
