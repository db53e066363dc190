"""A deterministic generated website whose crawl result is known in advance.

Why: an end-to-end crawl can only be checked if the exact set of reachable URLs (with titles, statuses
and BFS depths) is computable independently of the crawler. :func:`expected_pages` computes it from the
very same :func:`resolve` function the HTTP handler renders from, so the two cannot disagree.

Run as ``python -m crawler.testing.site_server --port 0 --pages N --seed S [--processes K]
[--disallow PREFIX ...] [--tls-cert F --tls-key F] [--page-kb KB]``; prints ``READY http(s)://...``.

Site layout:

* ``/p/<i>`` (0 <= i < N): ``<title>Page <i></title>``, filler text up to ~``--page-kb`` KiB and 5-15
  links drawn from a seeded RNG over (seed, i): plain, with fragment, absolute (built from the Host
  header), relative ``../p/j``, query pages ``/q/j?a=1&b=2`` and the reordered ``?b=2&a=1``,
  ``/missing/<k>`` (404), off-site, ``mailto:``, ``javascript:``, and ``/private/<k>`` when
  ``--disallow`` is given. About 10% of pages ("orphans") are never linked to, so not every page is
  reachable from ``/p/0``.
* ``/q/<j>?<anything>``: ``<title>Query <j></title>``, no links. Canonical form sorts params by key.
* ``/private/<k>``: ``<title>Private <k></title>``, no links; requests are counted.
* ``/robots.txt``: ``User-agent: *`` plus one ``Disallow:`` per ``--disallow`` prefix (404 if none).
* ``/__stats``: ``{"requests": total, "by_path_prefix": {"/p": n, "/q": n, "/missing": n,
  "/private": n, "/robots.txt": n, "other": n}, "pid": worker pid}``; ``/__stats`` itself is not counted. With
  ``--processes K > 1`` each worker counts only the requests it served, and a stats request is answered
  by whichever worker accepted it, so totals are per process.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from aiohttp import web

from crawler.testing.serving import bind_socket, run_prefork, server_ssl_context

OFFSITE_LINKS = ("http://offsite.invalid/x", "http://127.0.0.2:9/x")
STAT_PREFIXES = ("/p", "/q", "/missing", "/private", "/robots.txt")
NOT_FOUND_BODY = b"<!DOCTYPE html><html><body><h1>404 Not Found</h1><p>No such page.</p></body></html>"

# (kind, weight): plain links dominate so most non-orphan pages end up reachable.
_LINK_KINDS: tuple[tuple[str, int], ...] = (
    ("plain", 30),
    ("fragment", 8),
    ("absolute", 8),
    ("relative", 8),
    ("query", 5),
    ("query_reordered", 5),
    ("missing", 4),
    ("offsite", 4),
    ("mailto", 2),
    ("javascript", 2),
    ("private", 5),
)


# How each kind of link is written, from its target page number and the site's origin.
_HREFS: dict[str, Callable[[int, str], str]] = {
    "plain": lambda j, _origin: f"/p/{j}",
    "fragment": lambda j, _origin: f"/p/{j}#sec",
    "absolute": lambda j, origin: f"{origin}/p/{j}",
    "relative": lambda j, _origin: f"../p/{j}",
    "query": lambda j, _origin: f"/q/{j}?a=1&b=2",
    "query_reordered": lambda j, _origin: f"/q/{j}?b=2&a=1",
    "missing": lambda j, _origin: f"/missing/{j}",
    "offsite": lambda j, _origin: OFFSITE_LINKS[j % len(OFFSITE_LINKS)],
    "mailto": lambda j, _origin: f"mailto:user{j}@example.invalid",
    "javascript": lambda j, _origin: f"javascript:void({j})",
    "private": lambda j, _origin: f"/private/{j}",
}


@dataclass(frozen=True)
class PageSpec:
    """What a URL serves: status, title (None for 404) and the hrefs exactly as written in the HTML."""

    status: int
    title: str | None
    hrefs: tuple[str, ...] = ()


def is_orphan(seed: int, page: int) -> bool:
    """Pages that no link ever points to (page 0 is the root and never an orphan)."""
    return page != 0 and random.Random(f"orphan:{seed}:{page}").random() < 0.1


def page_hrefs(pages: int, seed: int, page: int, origin: str, private: bool) -> tuple[str, ...]:
    """The links of ``/p/<page>``: a pure function of its arguments (str seeds hash the same everywhere).

    ``origin`` (``scheme://host:port``) is only used for the absolute-form links.
    """
    rng = random.Random(f"links:{seed}:{page}")
    kinds = [k for k, _ in _LINK_KINDS if private or k != "private"]
    weights = [w for k, w in _LINK_KINDS if private or k != "private"]

    def target() -> int:
        for _ in range(8):
            j = rng.randrange(pages)
            if not is_orphan(seed, j):
                return j
        return 0

    hrefs: list[str] = []
    for _ in range(rng.randint(5, 15)):
        kind = rng.choices(kinds, weights)[0]
        hrefs.append(_HREFS[kind](target(), origin))
    return tuple(hrefs)


def _index(segment: str, pages: int) -> int | None:
    """Parse a page number, rejecting aliases like ``05`` so every page has one canonical URL."""
    if not segment.isdigit() or str(int(segment)) != segment:
        return None
    number = int(segment)
    return number if number < pages else None


def resolve(path: str, pages: int, seed: int, origin: str, private: bool) -> PageSpec:
    """What the site serves at ``path`` (query strings never change the content)."""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "":
        number = _index(parts[2], pages)
        if number is not None:
            if parts[1] == "p":
                return PageSpec(200, f"Page {number}", page_hrefs(pages, seed, number, origin, private))
            if parts[1] == "q":
                return PageSpec(200, f"Query {number}")
            if parts[1] == "private":
                return PageSpec(200, f"Private {number}")
    return PageSpec(404, None)


def canonical_url(url: str) -> str:
    """Absolute URL without fragment, query params sorted by key (stable), lower-case scheme/host."""
    parts = urlsplit(url)
    params = sorted(parse_qsl(parts.query, keep_blank_values=True), key=lambda kv: kv[0])
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", urlencode(params), ""))


def is_disallowed(url: str, disallow: Iterable[str]) -> bool:
    """robots.txt prefix match against path plus query."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return any(prefix and target.startswith(prefix) for prefix in disallow)


def expected_pages(
    pages: int, seed: int, base: str, disallow: Sequence[str] = ()
) -> dict[str, tuple[str | None, int, int]]:
    """Canonical URL -> (title or None, status, BFS depth) for everything reachable from ``base/p/0``.

    Only same-origin links are followed; 404 pages are reachable leaves; URLs matching a ``disallow``
    prefix are neither fetched nor listed. ``disallow`` must equal the server's ``--disallow`` list (a
    non-empty list also turns on ``/private/`` links, as on the server).
    """
    origin = canonical_url(base.rstrip("/") + "/")[:-1]
    private = bool(disallow)
    start = canonical_url(f"{origin}/p/0")
    result: dict[str, tuple[str | None, int, int]] = {}
    if is_disallowed(start, disallow):
        return result
    seen = {start}
    queue: deque[tuple[str, int]] = deque([(start, 0)])
    while queue:
        url, depth = queue.popleft()
        spec = resolve(urlsplit(url).path, pages, seed, origin, private)
        result[url] = (spec.title, spec.status, depth)
        for href in spec.hrefs:
            link = canonical_url(urljoin(url, href))
            if not link.startswith(origin + "/") or link in seen or is_disallowed(link, disallow):
                continue
            seen.add(link)
            queue.append((link, depth + 1))
    return result


# -- rendering --------------------------------------------------------------------------------------

_WORDS = (
    *("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do"),
    *("eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "crawler"),
    *("frontier", "politeness", "robots", "canonical", "fetch", "parse", "queue", "shard"),
)


@functools.cache
def _filler_text() -> str:
    rng = random.Random("filler")
    return " ".join(rng.choice(_WORDS) for _ in range(40_000))


def _filler(page: int, size: int) -> str:
    text = _filler_text()
    start = (page * 997) % (len(text) // 2)
    return text[start : start + max(size, 0)]


def render(spec: PageSpec, page_kb: int, salt: int) -> bytes:
    """HTML for a 200 page, padded with filler paragraphs to about ``page_kb`` KiB."""
    if spec.status == 404:
        return NOT_FOUND_BODY
    # Attribute values are escaped (``&`` -> ``&amp;``) as a real site would; parsers unescape them.
    links = "".join(f'<li><a href="{escape(href)}">link {n}</a></li>' for n, href in enumerate(spec.hrefs))
    head = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{spec.title}</title></head>'
        f"<body><h1>{spec.title}</h1><ul>{links}</ul>"
    )
    tail = '<h2 id="sec">Section</h2><p>The end.</p></body></html>'
    pad = page_kb * 1024 - len(head) - len(tail) - 7
    return f"{head}<p>{_filler(salt, pad)}</p>{tail}".encode()


@functools.lru_cache(maxsize=8192)
def _render_cached(path: str, pages: int, seed: int, origin: str, private: bool, page_kb: int) -> tuple[int, bytes]:
    spec = resolve(path, pages, seed, origin, private)
    salt = sum(path.encode())
    return spec.status, render(spec, page_kb, salt)


def make_app(pages: int, seed: int, disallow: Sequence[str] = (), page_kb: int = 4) -> web.Application:
    """The site as an aiohttp app; one catch-all handler keeps routing cheap and counting in one place."""
    private = bool(disallow)
    robots = ("User-agent: *\n" + "".join(f"Disallow: {p}\n" for p in disallow)).encode()
    counts = dict.fromkeys((*STAT_PREFIXES, "other"), 0)
    total = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal total
        path = request.path
        if path == "/__stats":
            return web.json_response({"requests": total, "by_path_prefix": counts, "pid": os.getpid()})
        total += 1
        prefix = "/" + path.split("/", 2)[1]
        counts[prefix if prefix in counts else "other"] += 1
        if path == "/robots.txt":
            if not disallow:
                return web.Response(status=404, text="no robots.txt")
            return web.Response(body=robots, content_type="text/plain")
        origin = f"{request.scheme}://{request.host}"
        status, body = _render_cached(path, pages, seed, origin, private, page_kb)
        return web.Response(status=status, body=body, content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deterministic generated website for crawler tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--disallow", action="append", default=[], metavar="PREFIX")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--page-kb", type=int, default=4)
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args(argv)
    if args.pages < 1:
        parser.error("--pages must be >= 1")

    sock = bind_socket(args.host, args.port)
    ssl_context = server_ssl_context(args.tls_cert, args.tls_key)
    return run_prefork(
        lambda: make_app(args.pages, args.seed, args.disallow, args.page_kb),
        sock,
        ssl_context,
        args.processes,
        use_uvloop=not args.no_uvloop,
    )


if __name__ == "__main__":
    sys.exit(main())
