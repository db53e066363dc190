"""A small, deterministic bookshop to scrape: categories, paginated listings, product pages with a price, an
availability line and JSON-LD, some books out of stock, some pre-orders, a few broken pages.

    python -m examples.bookshop.site --port 8000      # prints "READY http://127.0.0.1:8000"

Why it is generated from one table (`CATALOGUE`): a test can say exactly which items a correct scrape yields
(`expected_items`) without reading the HTML the parser reads. `/__stats` answers the paths requested so far (the
access log), so a test can check that only the links it allowed were fetched.

Layout: `/` links every category (`nav.categories`); `/catalogue/<category>/page-<n>.html` lists five books per
page (`article.book h3 a`, relative links) with a `li.next` link; `/books/<slug>.html` is a product page
(`/books/preorder/<slug>.html` for pre-orders). Every page also links the kind of pages a scraper must not fetch:
`/about.html`, `/cart?add=...`, `/account/login` (disallowed by robots.txt) and an off-site share link. Two
product pages answer 404 (the book was removed) and one JSON-LD block is broken (the parser falls back to HTML).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape

from aiohttp import web

PER_PAGE = 5
CATEGORIES = (("fiction", "Fiction", 13), ("science", "Science", 7), ("history", "History", 9), ("poetry", "Poésie", 4))
_ADJECTIVES = ("Silent", "Crimson", "Hidden", "Last", "Northern", "Broken", "Golden", "Quiet", "Wandering", "Café")
_NOUNS = ("Garden", "Atlas", "River", "Theorem", "Lighthouse", "Empire", "Orchard", "Archive", "Voyage", "Sonnet")


@dataclass(frozen=True, slots=True)
class Book:
    slug: str
    title: str
    category: str  # the category's display name, as the listing shows it
    category_slug: str
    price_pence: int
    stock: int  # 0: out of stock
    preorder: bool = False
    removed: bool = False  # the listing links it, the product page answers 404
    broken_json_ld: bool = False

    @property
    def path(self) -> str:
        return f"/books/preorder/{self.slug}.html" if self.preorder else f"/books/{self.slug}.html"

    @property
    def price(self) -> str:
        return f"{self.price_pence // 100}.{self.price_pence % 100:02d}"


def _catalogue() -> tuple[Book, ...]:
    rng = random.Random("bookshop")
    books: list[Book] = []
    n = 0
    for cat_slug, cat_name, count in CATEGORIES:
        for _ in range(count):
            title = f"The {_ADJECTIVES[n % 10]} {_NOUNS[(n * 7 + 3) % 10]}" + (f" {n // 10 + 1}" if n >= 10 else "")
            slug = f"{cat_slug}-{n:03d}-" + title.lower().replace(" ", "-").replace("é", "e")
            books.append(
                Book(
                    slug=slug,
                    title=title,
                    category=cat_name,
                    category_slug=cat_slug,
                    price_pence=rng.randrange(399, 4999),
                    stock=0 if n % 4 == 1 else rng.randrange(1, 20),
                    preorder=n % 11 == 5,
                    removed=n in (8, 21),
                    broken_json_ld=n == 14,
                )
            )
            n += 1
    return tuple(books)


CATALOGUE = _catalogue()
_BY_PATH = {b.path: b for b in CATALOGUE}


def expected_items(include_preorders: bool = True) -> list[dict[str, object]]:
    """The items a correct scrape of the whole shop yields (without `_url`), from the table, not the HTML."""
    return [
        {
            "name": b.title,
            "sku": b.slug,
            "price": b.price,
            "currency": "GBP",
            "in_stock": b.stock > 0,
            "stock": b.stock,
            "category": b.category,
        }
        for b in CATALOGUE
        if not b.removed and (include_preorders or not b.preorder)
    ]


def _layout(title: str, body: str) -> bytes:
    noise = (
        '<footer><a href="/about.html">About us</a> <a href="/account/login">Log in</a> '
        '<a href="https://social.invalid/share?u=bookshop">Share</a></footer>'
    )
    nav = "".join(f'<li><a href="/catalogue/{s}/page-1.html">{escape(n)}</a></li>' for s, n, _ in CATEGORIES)
    html = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{escape(title)} | Bookshop</title></head>'
        f'<body><header><a href="/">Bookshop</a><nav class="categories"><ul>{nav}</ul></nav></header>'
        f"<main>{body}</main>{noise}</body></html>"
    )
    return html.encode("utf-8")


def _listing(cat_slug: str, page: int) -> bytes | None:
    cat = next((c for c in CATEGORIES if c[0] == cat_slug), None)
    books = [b for b in CATALOGUE if b.category_slug == cat_slug]
    pages = max(1, -(-len(books) // PER_PAGE))
    if cat is None or not 1 <= page <= pages:
        return None
    rows = []
    for b in books[(page - 1) * PER_PAGE : page * PER_PAGE]:
        stock = "In stock" if b.stock else "Out of stock"
        rows.append(
            f'<article class="book"><h3><a href="../..{b.path}">{escape(b.title)}</a></h3>'
            f'<p class="price">£{b.price}</p><p class="availability">{stock}</p>'
            f'<a class="add" href="/cart?add={b.slug}">Add to basket</a></article>'
        )
    pager = f'<li class="previous"><a href="page-{page - 1}.html">previous</a></li>' if page > 1 else ""
    pager += f'<li class="next"><a href="page-{page + 1}.html">next</a></li>' if page < pages else ""
    body = f'<h1>{escape(cat[1])}</h1><section class="books">{"".join(rows)}</section><ul class="pager">{pager}</ul>'
    return _layout(f"{cat[1]} - page {page}", body)


def _product(b: Book) -> bytes:
    availability = f"In stock ({b.stock} available)" if b.stock else "Out of stock"
    ld = {
        "@context": "https://schema.org",
        "@type": "Product",
        "name": b.title,
        "sku": b.slug,
        "offers": {
            "@type": "Offer",
            "price": b.price,
            "priceCurrency": "GBP",
            "availability": "https://schema.org/" + ("InStock" if b.stock else "OutOfStock"),
        },
    }
    ld_text = json.dumps(ld, ensure_ascii=False)
    if b.broken_json_ld:
        ld_text = ld_text[:-7]  # a shop template bug: the block is cut off
    body = (
        f'<script type="application/ld+json">{ld_text}</script>'
        f'<article class="product" data-sku="{escape(b.slug)}"><h1>{escape(b.title)}</h1>'
        f'<p class="price">£{b.price}</p><p class="availability">{availability}</p>'
        f'<ul class="breadcrumb"><li><a href="/catalogue/{b.category_slug}/page-1.html">{escape(b.category)}</a></li>'
        f'</ul><a class="add" href="/cart?add={b.slug}">Add to basket</a>'
        f'<a href="/books/{b.slug}/reviews.html">Reviews</a></article>'
    )
    return _layout(b.title, body)


def render(path: str) -> tuple[int, bytes]:
    """(status, HTML) for a path: the whole site as a pure function, for tests that need no server."""
    if path in ("/", "/index.html"):
        return 200, _layout("Home", "<h1>Welcome</h1><p>Pick a category.</p>")
    if path == "/about.html":
        return 200, _layout("About", "<p>A small shop.</p>")
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "catalogue" and parts[3].startswith("page-") and parts[3].endswith(".html"):
        number = parts[3][5:-5]
        html = _listing(parts[2], int(number)) if number.isdigit() else None
        if html is not None:
            return 200, html
    book = _BY_PATH.get(path)
    if book is not None and not book.removed:
        return 200, _product(book)
    return 404, _layout("Not found", "<h1>404</h1><p>This page is gone.</p>")


def make_app(log: list[str] | None = None) -> web.Application:
    """The shop as an aiohttp app; every request's path (with its query) is appended to `log`."""
    access: list[str] = [] if log is None else log
    robots = b"User-agent: *\nDisallow: /account/\n"

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/__stats":
            return web.json_response({"requests": len(access), "paths": access})
        access.append(request.path_qs)
        if request.path == "/robots.txt":
            return web.Response(body=robots, content_type="text/plain")
        status, body = render(request.path)
        return web.Response(status=status, body=body, content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _serve(host: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound_host, bound_port = sock.getsockname()[:2]
    print(f"READY http://{bound_host}:{bound_port}", flush=True)
    print(f"bookshop: {len(CATALOGUE)} books; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A small bookshop to scrape (the --parser example).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))
    return 0


def iter_paths() -> Iterator[str]:
    """Every path the shop links from its own pages (for documentation and tests)."""
    yield "/"
    for slug, _, _ in CATEGORIES:
        page = 1
        while _listing(slug, page) is not None:
            yield f"/catalogue/{slug}/page-{page}.html"
            page += 1
    yield from (b.path for b in CATALOGUE)


if __name__ == "__main__":
    sys.exit(main())
