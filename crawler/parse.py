"""HTML parsing, run in the parse process pool: raw (maybe compressed) bytes + URL -> ParsedPage.

Top level and picklable, importing no asyncio (rq keeps job functions importable the same way). Decompression
happens here too, capped at `max_bytes` of output, so a gzip, deflate or brotli bomb costs the pool at most the
cap and never touches the event loop. Decoding never raises: header charset, else a `<meta>` charset, else UTF-8
with replacement characters.
"""

from __future__ import annotations

import codecs
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from selectolax.lexbor import LexborHTMLParser

from crawler.settings import ExtractRule
from crawler.urls import LinkResolver, in_domain, resolve

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-:.]+)""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ParseTask:
    body: bytes
    url: str  # the URL as leased
    final_url: str  # after redirects: links resolve against it
    content_encoding: str = ""
    header_charset: str | None = None
    max_bytes: int = 10 * 1024 * 1024
    max_links: int = 1000
    keep_tracking: bool = False
    follow: bool = True
    allow_domains: tuple[str, ...] = ()
    rules: tuple[ExtractRule, ...] = ()
    ban_markers: tuple[str, ...] = ()


@dataclass(slots=True)
class ParsedPage:
    size: int = 0  # decompressed bytes
    title: str | None = None
    noindex: bool = False
    nofollow: bool = False
    canonical: str | None = None
    links: list[str] = field(default_factory=list)  # absolute, normalised, deduplicated, capped
    links_total: int = 0  # distinct links on the page before the cap
    follow: list[tuple[bytes, str, str]] = field(default_factory=list)  # (fingerprint, host, url) in scope
    text_length: int = 0
    charset: str = "utf-8"
    data: dict[str, Any] | None = None
    error: str | None = None  # "body_too_large", "decode_error": the page is still recorded
    banned: bool = False  # a configured ban marker is in the body: the gateway's exit IP is blocked


class _TooLarge(Exception):
    pass


def decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """Undo Content-Encoding with an output cap; raises _TooLarge past it. Unknown encodings pass through."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        out = body
    elif enc in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header, detected
        try:
            out = d.decompress(body, max_bytes + 1)
        except zlib.error:
            if enc != "deflate":
                raise
            d = zlib.decompressobj(-15)  # raw deflate, as some servers send for "deflate"
            out = d.decompress(body, max_bytes + 1)
    elif enc == "br":
        import brotli

        dec = brotli.Decompressor()
        out = dec.process(body, output_buffer_limit=max_bytes + 1)
    else:
        out = body
    if len(out) > max_bytes:
        raise _TooLarge
    return out


def _charset(body: bytes, header_charset: str | None) -> str:
    for candidate in (header_charset, _sniff_meta(body)):
        if candidate:
            try:
                return codecs.lookup(candidate).name
            except LookupError:
                continue
    return "utf-8"


def _sniff_meta(body: bytes) -> str | None:
    m = _META_CHARSET.search(body[:4096])
    return m.group(1).decode("ascii", "replace") if m else None


def parse_pages(tasks: list[ParseTask]) -> list[ParsedPage]:
    """A batch per call: the pool pays its IPC once per batch, not once per page."""
    out = []
    for t in tasks:
        try:
            out.append(parse_page(t))
        except Exception:  # parse_page is written never to raise; one bad page must not fail its batch
            out.append(ParsedPage(size=len(t.body), error="parse_error"))
    return out


def parse_page(task: ParseTask) -> ParsedPage:
    """Never raises for any input bytes: a page that cannot be read becomes a ParsedPage with `error` set."""
    page = ParsedPage()
    try:
        raw = decompress(task.body, task.content_encoding, task.max_bytes)
    except _TooLarge:
        page.error = "body_too_large"
        page.size = task.max_bytes
        return page
    except Exception:
        page.error = "decode_error"
        return page
    page.size = len(raw)
    page.charset = _charset(raw, task.header_charset)
    text = raw.decode(page.charset, errors="replace")
    if task.ban_markers and any(m in text for m in task.ban_markers):
        page.banned = True
    tree = LexborHTMLParser(text)

    title = tree.css_first("title")
    if title is not None:
        page.title = " ".join(title.text().split())[:1000] or None
    for meta in tree.css("meta[name]"):
        if (meta.attributes.get("name") or "").lower() == "robots":
            content = (meta.attributes.get("content") or "").lower()
            page.noindex = page.noindex or "noindex" in content or "none" in content
            page.nofollow = page.nofollow or "nofollow" in content or "none" in content
    base = task.final_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        base = resolve(base_node.attributes.get("href") or "", task.final_url) or base  # a bad <base>: ignored
    canon = tree.css_first('link[rel="canonical"]')
    if canon is not None and canon.attributes.get("href"):
        page.canonical = resolve(canon.attributes["href"] or "", base)  # None for a bad one

    _links(tree, base, task, page)
    body = tree.body
    page.text_length = len(body.text(separator=" ")) if body is not None else 0
    if task.rules:
        page.data = extract(tree, task.rules)
    return page


_RESOLVERS: dict[bool, LinkResolver] = {}  # one per parse process and keep_tracking setting


def _links(tree: LexborHTMLParser, base: str, task: ParseTask, page: ParsedPage) -> None:
    """Links as a browser resolves them (WHATWG); a bad href costs only that link. One link per dedup key: the
    first spelling on the page is kept, the others are the same URL to the crawl."""
    own_hosts = {_host(task.url), _host(task.final_url)}
    seen: set[bytes] = set()
    follow_ok = task.follow and not page.nofollow
    resolver = _RESOLVERS.get(task.keep_tracking)
    if resolver is None:
        resolver = _RESOLVERS[task.keep_tracking] = LinkResolver(task.keep_tracking)
    for a in tree.css("a[href]"):
        href = a.attributes.get("href")
        if not href:
            continue
        n = resolver(href, base)
        if n is None or n.fingerprint in seen:
            continue
        seen.add(n.fingerprint)
        if len(page.links) < task.max_links:
            page.links.append(n.url)
            in_scope = n.host in own_hosts or (task.allow_domains and in_domain(n.host, task.allow_domains))
            if follow_ok and in_scope and "nofollow" not in (a.attributes.get("rel") or ""):
                page.follow.append((n.fingerprint, n.host, n.url))
    page.links_total = len(seen)


def _host(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].lower()


def extract(tree: LexborHTMLParser, rules: tuple[ExtractRule, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rules:
        nodes = tree.css(r.css) if r.all else [n for n in [tree.css_first(r.css)] if n is not None]
        values = [(n.attributes.get(r.attr) if r.attr else " ".join(n.text().split())) for n in nodes]
        out[r.name] = values if r.all else (values[0] if values else None)
    return out
