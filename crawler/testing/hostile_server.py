"""Misbehaving HTTP endpoints, so the crawler's defences are tested against real sockets.

Why: retries, Retry-After, connection resets, size caps, decompression bombs, slow-loris bodies,
hangs, header floods, redirect loops and charset confusion only show their true failure modes on the
wire; mocks tend to be kinder than the internet.

Run as ``python -m crawler.testing.hostile_server --port 0``; prints ``READY http://127.0.0.1:<port>``.
State for the ``/flaky/...`` endpoints is per process and keyed by the full path plus query, so tests
isolate themselves by using a unique token.

Endpoints (``<n>``, ``<mb>``, ``<kb>``, ``<ms>``, ``<seconds>`` are integers):

* ``/flaky/503/<n>/<token>`` 503 (no Retry-After) n times, then 200 ``<title>ok</title>``;
  ``/flaky/429/<seconds>/<token>`` 429 + ``Retry-After`` once, then 200;
  ``/flaky/reset/<token>`` once: headers with Content-Length 1000, a few bytes, then a TCP RST; then 200.
* ``/big/<mb>`` (Content-Length) and ``/big-chunked/<mb>`` (chunked): <mb> MiB of HTML, streamed.
* ``/bomb/{gzip,deflate,br}/<mb>``: a small compressed body inflating to <mb> MiB of ``<p>``.
* ``/drip/<seconds>`` 1 byte/s; ``/infinite`` endless chunked body; ``/hang`` never answers.
* ``/headers/huge`` 200 headers of 1 KiB; ``/headers/huge-one`` one 100 KiB header.
* ``/redirect/loop``; ``/redirect/chain/<n>`` -> ... -> ``/redirect/chain/0`` (200).
* ``/links/<n>`` n links ``/x/<k>``; ``/x/<k>`` a leaf page; ``/big-page/<kb>`` exact-size HTML.
* ``/charset/latin1``, ``/charset/lying`` (says utf-8, is latin-1), ``/charset/meta`` (cp1251 via
  ``<meta>``), ``/broken-html``, ``/image.png``, ``/doc.pdf``, ``/slow/<ms>``.

``GET /__stats`` returns ``{"requests": total, "by_first_segment": {"flaky": n, ...},
"in_flight": n, "peak_in_flight": n}`` (``/__stats`` itself is not counted). ``peak_in_flight`` is the
most requests ever being handled at once, which lets tests bound a crawler's concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket
import struct
import sys
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable

import brotli
from aiohttp import web

from crawler.testing.serving import bind_socket, run_prefork

MIB = 1024 * 1024
CHUNK = 64 * 1024
MAX_MB = 4096

LATIN1_TITLE = "Café déjà vu, señor"
CP1251_TITLE = "Привет, мир"
_LATIN1_HTML = f"<html><head><title>{LATIN1_TITLE}</title></head><body><p>Ça coûte cher.</p></body></html>"
_CP1251_HTML = (
    f'<html><head><meta charset="windows-1251"><title>{CP1251_TITLE}</title></head>'
    "<body><p>Съешь же ещё этих мягких французских булок.</p></body></html>"
)
BROKEN_HTML = (
    b"<html><head><title>broken</title><body><div><p>unclosed <b>bold <i>italic"
    b"<a href='/x/1'>one<a href=\"/x/2\">two<table><tr><td>cell\xff\xfe\x00\x80garbage<<<>>>"
    b'<a href=/x/3>three</div></span><a href="/x/4'
)
PDF_BYTES = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _png_1x1() -> bytes:
    """A valid 1x1 RGB PNG (real bytes, so content sniffers see a real image)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG_BYTES = _png_1x1()


def _html_page(title: str, body: str = "") -> web.Response:
    html = f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>"
    return web.Response(text=html, content_type="text/html")


async def _stream_html(resp: web.StreamResponse, total: int, title: str) -> None:
    """Write exactly ``total`` bytes of HTML in 64 KiB writes (the prefix/suffix are truncated if tiny)."""
    head = f"<!DOCTYPE html><html><head><title>{title}</title></head><body>".encode()
    tail = b"</body></html>"
    filler = (b"<p>" + b"x" * 60 + b"</p>\n") * (CHUNK // 68 + 1)
    written = 0
    first = head[:total]
    await resp.write(first)
    written += len(first)
    body_end = max(total - len(tail), written)
    while written < body_end:
        piece = filler[: min(CHUNK, body_end - written)]
        await resp.write(piece)
        written += len(piece)
    await resp.write(tail[: total - written])


def _bomb_block() -> bytes:
    return (b"<p>" * (MIB // 3 + 1))[:MIB]


@functools.cache
def _bomb_body(encoding: str, mb: int) -> bytes:
    """Compress ``mb`` MiB of ``<p>`` bytes once per (encoding, size); cached for the process lifetime."""
    block = _bomb_block()
    if encoding == "br":
        compressor = brotli.Compressor(quality=5)
        out = [compressor.process(block) for _ in range(mb)]
        out.append(compressor.finish())
        return b"".join(out)
    wbits = 31 if encoding == "gzip" else 15  # gzip container vs zlib container (HTTP "deflate")
    zcompressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    parts = [zcompressor.compress(block) for _ in range(mb)]
    parts.append(zcompressor.flush())
    return b"".join(parts)


async def big(request: web.Request) -> web.StreamResponse:
    total = min(int(request.match_info["mb"]), MAX_MB) * MIB
    chunked = request.path.startswith("/big-chunked/")
    resp = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
    if chunked:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = total
    await resp.prepare(request)
    await _stream_html(resp, total, "big")
    await resp.write_eof()
    return resp


async def drip(request: web.Request) -> web.StreamResponse:
    seconds = int(request.match_info["seconds"])
    text = b"<html><head><title>drip</title></head><body>" + b"." * max(seconds, 0)
    resp = web.StreamResponse(headers={"Content-Type": "text/html"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for n in range(seconds):
        await resp.write(text[n : n + 1])
        await asyncio.sleep(1.0)
    await resp.write_eof()
    return resp


async def infinite(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/html"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunk = b"<html><head><title>infinite</title></head><body>" + b"<p>more</p>" * (CHUNK // 11)
    while True:
        await resp.write(chunk)
        await asyncio.sleep(0)  # write() only yields under backpressure; stay fair to other requests


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def huge_headers(request: web.Request) -> web.Response:
    headers = {f"X-Huge-{n}": "h" * 1024 for n in range(200)}
    return web.Response(text="<title>huge headers</title>", content_type="text/html", headers=headers)


async def huge_header_one(request: web.Request) -> web.Response:
    headers = {"X-Huge": "h" * (100 * 1024)}
    return web.Response(text="<title>huge header</title>", content_type="text/html", headers=headers)


async def redirect_loop(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/redirect/loop"})


async def redirect_chain(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    if n <= 0:
        return _html_page("chain end")
    return web.Response(status=302, headers={"Location": f"/redirect/chain/{n - 1}"})


async def links(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    items = "".join(f'<a href="/x/{k}">x{k}</a>\n' for k in range(n))
    return _html_page(f"links {n}", items)


async def x_page(request: web.Request) -> web.Response:
    return _html_page(f"X {request.match_info['k']}")


async def charset_latin1(request: web.Request) -> web.Response:
    return web.Response(body=_LATIN1_HTML.encode("latin-1"), headers={"Content-Type": "text/html; charset=iso-8859-1"})


async def charset_lying(request: web.Request) -> web.Response:
    return web.Response(body=_LATIN1_HTML.encode("latin-1"), headers={"Content-Type": "text/html; charset=utf-8"})


async def charset_meta(request: web.Request) -> web.Response:
    return web.Response(body=_CP1251_HTML.encode("cp1251"), headers={"Content-Type": "text/html"})


async def broken_html(request: web.Request) -> web.Response:
    return web.Response(body=BROKEN_HTML, headers={"Content-Type": "text/html"})


async def image(request: web.Request) -> web.Response:
    return web.Response(body=PNG_BYTES, headers={"Content-Type": "image/png"})


async def pdf(request: web.Request) -> web.Response:
    return web.Response(body=PDF_BYTES, headers={"Content-Type": "application/pdf"})


async def big_page(request: web.Request) -> web.Response:
    kb = min(int(request.match_info["kb"]), MAX_MB * 1024)
    return web.Response(body=_big_page(kb), headers={"Content-Type": "text/html; charset=utf-8"})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.match_info["ms"]) / 1000)
    return _html_page("slow")


class _Hostile:
    """The per-process state of the endpoints that remember: /flaky counters, request counts, bomb locks."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}  # path+query -> requests so far (the /flaky endpoints)
        self.by_segment: Counter[str] = Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.total = 0
        # One lock per bomb: concurrent first requests compress it once, not once each.
        self.bomb_locks: dict[tuple[str, int], asyncio.Lock] = {}

    def hits(self, request: web.Request) -> int:
        """How many times this exact path+query was requested before (0 on the first request)."""
        key = request.path_qs
        seen = self.seen.get(key, 0)
        self.seen[key] = seen + 1
        return seen

    @web.middleware
    async def count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count every request but /__stats, and how many are being handled at once (``peak_in_flight``)."""
        segment = request.path.split("/", 2)[1]
        if segment == "__stats":
            return await handler(request)
        self.by_segment[segment] += 1
        self.total += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": self.total,
                "by_first_segment": dict(self.by_segment),
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
            }
        )

    async def flaky_503(self, request: web.Request) -> web.Response:
        if self.hits(request) < int(request.match_info["n"]):
            return web.Response(status=503, text="try again later")
        return _html_page("ok")

    async def flaky_429(self, request: web.Request) -> web.Response:
        if self.hits(request) == 0:
            retry_after = request.match_info["seconds"]
            return web.Response(status=429, text="slow down", headers={"Retry-After": retry_after})
        return _html_page("ok")

    async def flaky_reset(self, request: web.Request) -> web.StreamResponse:
        if self.hits(request) > 0:
            return _html_page("ok")
        resp = web.StreamResponse(headers={"Content-Type": "text/html"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"<html><head><title>partial")
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0 turns close into a RST rather than a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise asyncio.CancelledError  # nothing sensible is left to send; end the handler quietly

    async def bomb(self, request: web.Request) -> web.Response:
        encoding = request.match_info["encoding"]
        mb = min(int(request.match_info["mb"]), MAX_MB)
        lock = self.bomb_locks.setdefault((encoding, mb), asyncio.Lock())
        async with lock:  # compress once, off the event loop, even under concurrent requests
            body = await asyncio.to_thread(_bomb_body, encoding, mb)
        return web.Response(body=body, headers={"Content-Type": "text/html", "Content-Encoding": encoding})


def make_app() -> web.Application:
    """The hostile endpoints as an aiohttp app, with fresh per-process state."""
    state = _Hostile()
    app = web.Application(middlewares=[state.count])
    app.router.add_get("/__stats", state.stats)
    app.router.add_get(r"/flaky/503/{n:\d+}/{token}", state.flaky_503)
    app.router.add_get(r"/flaky/429/{seconds:\d+}/{token}", state.flaky_429)
    app.router.add_get("/flaky/reset/{token}", state.flaky_reset)
    app.router.add_get(r"/big/{mb:\d+}", big)
    app.router.add_get(r"/big-chunked/{mb:\d+}", big)
    app.router.add_get(r"/bomb/{encoding:gzip|deflate|br}/{mb:\d+}", state.bomb)
    app.router.add_get(r"/drip/{seconds:\d+}", drip)
    app.router.add_get("/infinite", infinite)
    app.router.add_get("/hang", hang)
    app.router.add_get("/headers/huge", huge_headers)
    app.router.add_get("/headers/huge-one", huge_header_one)
    app.router.add_get("/redirect/loop", redirect_loop)
    app.router.add_get(r"/redirect/chain/{n:\d+}", redirect_chain)
    app.router.add_get(r"/links/{n:\d+}", links)
    app.router.add_get("/x/{k}", x_page)
    app.router.add_get("/charset/latin1", charset_latin1)
    app.router.add_get("/charset/lying", charset_lying)
    app.router.add_get("/charset/meta", charset_meta)
    app.router.add_get("/broken-html", broken_html)
    app.router.add_get("/image.png", image)
    app.router.add_get("/doc.pdf", pdf)
    app.router.add_get(r"/big-page/{kb:\d+}", big_page)
    app.router.add_get(r"/slow/{ms:\d+}", slow)
    return app


@functools.lru_cache(maxsize=64)
def _big_page(kb: int) -> bytes:
    """A valid HTML page of exactly ``kb`` KiB (when kb >= 8) with a title and 100 links."""
    links = "".join(f'<li><a href="/x/{k}">item {k}</a></li>' for k in range(100))
    head = f"<!DOCTYPE html><html><head><title>Big page {kb}</title></head><body><ul>{links}</ul>"
    tail = "</body></html>"
    paragraph = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 4 + "</p>\n"
    room = max(kb * 1024 - len(head) - len(tail), 0)
    filler = (paragraph * (room // len(paragraph) + 1))[:room]
    # Never cut a tag in half: pad the partial last paragraph with spaces instead.
    cut = filler.rfind("\n") + 1
    filler = filler[:cut] + " " * (room - cut)
    return (head + filler + tail).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Misbehaving HTTP endpoints for crawler tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    sock = bind_socket(args.host, args.port)
    # handler_cancellation: a client that gives up on /hang or /drip really ends that handler, so
    # in_flight drops back and nothing lingers until shutdown.
    return run_prefork(make_app, sock, None, 1, use_uvloop=False, runner_kwargs={"handler_cancellation": True})


if __name__ == "__main__":
    sys.exit(main())
