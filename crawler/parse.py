"""HTML parsing, run in the parse process pool: raw (maybe compressed) bytes + URL -> ParsedPage.

Top level and picklable, importing no asyncio (rq keeps job functions importable the same way). Decompression
happens here too, capped at `max_bytes` of output, so a gzip, deflate or brotli bomb costs the pool at most the
cap and never touches the event loop. Decoding follows the WHATWG Encoding Standard through w3lib's
`html_to_unicode` (as Scrapy does): a BOM, else the header charset, else a `<meta>` charset, else UTF-8, with the
standard's labels (`iso-8859-1` is windows-1252); it never raises, bad bytes become U+FFFD.

With `parser_spec`, the user's parser (crawler.scrape) runs here too, on the tree the built-in extraction used;
its failures are the page's recorded error, never the batch's.
"""

from __future__ import annotations

import json
import time
import traceback
import zlib
from collections.abc import Mapping, MutableSequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from selectolax.lexbor import LexborHTMLParser
from w3lib.encoding import html_to_unicode

from crawler.entries import Extras, InvalidExtras
from crawler.linkrules import LinkFilter, LinkRules
from crawler.schedule import body_digest
from crawler.scrape import Headers, Page, ParserOutputError, describe, encode_data, get_parser, run_parser
from crawler.settings import ExtractRule
from crawler.sitemaps import ERROR_MALFORMED, ERROR_TOO_LARGE, parse_sitemap
from crawler.urls import InvalidURL, LinkResolver, crawl_url, in_domain, resolve

if TYPE_CHECKING:
    from crawler.warc import EncodedRecords, WarcExchange

NO_RULES = LinkRules()


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
    # what the user's parser is given (crawler.scrape.Page); `data` may be the frontier's JSON text, decoded here
    status: int = 200
    depth: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    data: Mapping[str, Any] | str | None = None
    label: str | None = None
    extras_json: str = ""  # the lease's extras as stored (crawler.entries): decoded here, never on the event loop
    kind: str | None = None  # "sitemap": the body is a sitemap (crawler.sitemaps), not an HTML page
    truncated: bool = False  # the body was cut at its cap (a sitemap past 50 MiB): the rest was never read
    want_digest: bool = False  # a recurring URL: digest the body (or the parser's items) to say `changed`
    parser_spec: str | None = None  # "module:function": loaded once per parse process
    link_rules: LinkRules = NO_RULES
    want_traceback: bool = False  # `crawl parse`: keep the parser's traceback for the developer
    warc: tuple[WarcExchange, ...] = ()  # --warc: this fetch's exchanges, encoded here into ParsedPage.warc


class FollowLink(NamedTuple):
    """A URL to add to the frontier: a page's link, or a parser's `Follow` (with its options)."""

    fingerprint: bytes
    host: str
    url: str
    data: str | None = None  # the user data as JSON text (validated: JSON, at most 8 KiB)
    label: str | None = None
    priority: int | None = None
    headers: tuple[tuple[str, str], ...] | None = None
    extras_json: str = ""  # data, label and headers as the frontier stores them (crawler.entries.Extras)


@dataclass(slots=True)
class ParsedPage:
    size: int = 0  # decompressed bytes
    title: str | None = None
    noindex: bool = False
    nofollow: bool = False
    canonical: str | None = None
    links: list[str] = field(default_factory=list)  # absolute, normalised, deduplicated, capped
    links_total: int = 0  # distinct links on the page before the cap
    # the page's links to follow: (fingerprint, host, url), in scope, allowed by the link rules; plain tuples, as
    # they cross the process boundary by the thousand (a NamedTuple doubles the pickling time of a batch)
    follow: list[tuple[bytes, str, str]] = field(default_factory=list)
    text_length: int = 0
    charset: str = "utf-8"
    data: dict[str, Any] | None = None
    # "body_too_large", "decode_error", "parser_error", "parse_timeout", "parser_crashed": the page is still recorded
    error: str | None = None
    banned: bool = False  # a configured ban marker is in the body: the gateway's exit IP is blocked
    # the user's parser: its items as JSONL bytes (each with "_url"), ready for the items sink, and how many
    items: bytes = b""
    items_count: int = 0
    digest: str | None = None  # with want_digest: of the body, or of the items when a parser runs
    parser_error_detail: str | None = None  # "KeyError: 'price'": the exception type and first line
    parser_ms: float = 0.0  # time in the user's parser
    parser_traceback: str | None = None  # only with ParseTask.want_traceback (`crawl parse`), capped
    # the parser's Follows, resolved, in scope, allowed by the rules, with their options; a URL that is in both
    # lists is taken out of `follow` (the parser's request carries its data and label)
    requests: list[FollowLink] = field(default_factory=list)
    warc: EncodedRecords | None = None  # the task's WARC records, built and gzipped (None: the writer encodes them)


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


def _decode(raw: bytes, header_charset: str | None) -> tuple[str, str]:
    """(codec name, text): BOM, header charset, `<meta>` charset, UTF-8, per WHATWG (w3lib). Never raises."""
    content_type = f"text/html; charset={header_charset}" if header_charset else None
    try:
        charset, text = html_to_unicode(content_type, raw)
    except Exception:  # w3lib is written never to raise; a codec bug must not cost the page
        return "utf-8", raw.decode("utf-8", "replace")
    return ("utf-8" if charset in ("utf8", "utf-8") else charset), text


def parse_pages(tasks: list[ParseTask], progress: MutableSequence[float] | None = None) -> list[ParsedPage]:
    """A batch per call: the pool pays its IPC once per batch, not once per page.

    `progress` (shared memory from the pool) gets [index of the page being parsed, its start on the monotonic
    clock] before each page and index -1 after the batch: the pool's watchdog reads it to find a hung page."""
    out = []
    for i, t in enumerate(tasks):
        if progress is not None:
            progress[1] = time.monotonic()
            progress[0] = i
        try:
            page = parse_page(t)
        except Exception:  # parse_page is written never to raise; one bad page must not fail its batch
            page = ParsedPage(size=len(t.body), error="parse_error")
        if t.warc:
            from crawler.warc import encode  # warcio and isal only in processes that archive

            page.warc = encode(t.warc)
        out.append(page)
    if progress is not None:
        progress[0] = -1
    return out


def parse_page(task: ParseTask) -> ParsedPage:
    """Never raises for any input bytes: a page that cannot be read becomes a ParsedPage with `error` set."""
    if task.kind == "sitemap":
        return sitemap_page(task)
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
    page.charset, text = _decode(raw, task.header_charset)
    if task.ban_markers and any(m in text for m in task.ban_markers):
        page.banned = True
    tree = LexborHTMLParser(text)

    title = tree.css_first("title")
    if title is not None:
        page.title = " ".join(title.text().split())[:1000] or None
    _meta_robots(tree, page)
    base = task.final_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        base = resolve(base_node.attributes.get("href") or "", task.final_url) or base  # a bad <base>: ignored
    canon = tree.css_first('link[rel="canonical"]')
    if canon is not None and canon.attributes.get("href"):
        page.canonical = resolve(canon.attributes["href"] or "", base)  # None for a bad one

    allowed = task.link_rules.bind(tree) if task.link_rules.active else None
    _links(tree, base, task, page, allowed)
    body = tree.body
    page.text_length = len(body.text(separator=" ")) if body is not None else 0
    if task.rules:
        page.data = extract(tree, task.rules)
    if task.parser_spec is not None and (task.status == 0 or 200 <= task.status < 300):
        _run_user_parser(task, page, _page_view(task, page, tree, text, allowed), base)
    if task.want_digest:
        page.digest = body_digest(page.items if task.parser_spec else raw)  # decoded: not the gzip framing
    return page


def _meta_robots(tree: LexborHTMLParser, page: ParsedPage) -> None:
    for meta in tree.css("meta[name]"):
        if (meta.attributes.get("name") or "").lower() == "robots":
            content = (meta.attributes.get("content") or "").lower()
            page.noindex = page.noindex or "noindex" in content or "none" in content
            page.nofollow = page.nofollow or "nofollow" in content or "none" in content


_RESOLVERS: dict[bool, LinkResolver] = {}  # one per parse process and keep_tracking setting


def _links(
    tree: LexborHTMLParser, base: str, task: ParseTask, page: ParsedPage, allowed: LinkFilter | None = None
) -> None:
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
            ok = allowed is None or allowed(n.url, a)  # the link rules (crawler.linkrules); records what passed
            if ok and follow_ok and in_scope and "nofollow" not in (a.attributes.get("rel") or ""):
                page.follow.append((n.fingerprint, n.host, n.url))
    page.links_total = len(seen)


def _page_view(
    task: ParseTask, page: ParsedPage, tree: LexborHTMLParser, text: str, allowed: LinkFilter | None
) -> Page:
    """The parser's view of the page: the tree and text already built, the links after the rules."""
    data, label = task.data, task.label
    if isinstance(data, str):
        try:
            data = json.loads(data) if data else None
        except ValueError:
            data = None
    if task.extras_json:
        extras = Extras.decode(task.extras_json)
        if extras is not None:
            data, label = extras.data, extras.label
    return Page(
        url=task.url,
        final_url=task.final_url,
        status=task.status,
        headers=Headers(task.headers),
        depth=task.depth,
        data=dict(data) if isinstance(data, Mapping) else {},
        label=label,
        text=text,
        charset=page.charset,
        tree=tree,
        links=allowed.accepted if allowed is not None else list(page.links),
    )


def _run_user_parser(task: ParseTask, page: ParsedPage, view: Page, base: str) -> None:
    """Run the user's parser on `view`; its items and follows join `page`, or its failure becomes `page.error`."""
    assert task.parser_spec is not None
    t0 = time.perf_counter()
    try:
        out = run_parser(get_parser(task.parser_spec), view, task.max_links)
        follows = [_follow_link(f, base, task) for f in out.follows]
    except Exception as exc:  # user code: any failure is this page's recorded error, never the batch's
        page.error = "parser_error"
        page.parser_error_detail = describe(exc) if not isinstance(exc, ParserOutputError) else str(exc)[:300]
        if task.want_traceback:
            page.parser_traceback = traceback.format_exc()[-8000:]
        return
    finally:
        page.parser_ms = (time.perf_counter() - t0) * 1000
    page.items, page.items_count = out.items, out.count
    # built-in follows exist only with --follow (task.follow); the parser's own Follow of the same URL wins
    seen: set[str] = set()
    for f in follows:
        if f is not None and f.url not in seen:
            seen.add(f.url)
            page.requests.append(f)
    if seen and page.follow:
        page.follow = [f for f in page.follow if f[2] not in seen]


def _follow_link(f: Any, base: str, task: ParseTask) -> FollowLink | None:
    """A parser's Follow as a frontier link: resolved against the page, normalised, in scope, allowed by the
    include/exclude rules; None when it is not crawlable or not allowed (dropped, as a link would be)."""
    data = encode_data(f.data)  # raises ParserOutputError: bad data is the parser's error, not a silent drop
    try:
        n = crawl_url(f.url, base, keep_tracking=task.keep_tracking)
    except InvalidURL:
        return None
    own_hosts = {_host(task.url), _host(task.final_url)}
    if n.host not in own_hosts and not (task.allow_domains and in_domain(n.host, task.allow_domains)):
        return None
    if task.link_rules.active and not task.link_rules.allows_url(n.url):
        return None
    headers = tuple(dict(f.headers).items()) if f.headers else None
    try:
        extras = Extras(f.data or None, f.label, dict(headers) if headers else None).encode()
    except InvalidExtras as exc:
        raise ParserOutputError(f"Follow({f.url!r}) cannot travel with its URL: {exc}") from None
    return FollowLink(n.fingerprint, n.host, n.url, data, f.label, f.priority, headers, extras)


def _host(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].lower()


def extract(tree: LexborHTMLParser, rules: tuple[ExtractRule, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rules:
        nodes = tree.css(r.css) if r.all else [n for n in [tree.css_first(r.css)] if n is not None]
        values = [(n.attributes.get(r.attr) if r.attr else " ".join(n.text().split())) for n in nodes]
        out[r.name] = values if r.all else (values[0] if values else None)
    return out


SITEMAP_MAX_DEPTH = 3  # sitemap indexes nested at most this deep (an index's child's child's child is expanded)


def sitemap_page(task: ParseTask) -> ParsedPage:
    """A sitemap as a page: its URLs (lastmod and priority as their user data) and child sitemaps become follow
    requests; its counts go in `data`. Streaming and bounded (crawler.sitemaps); never raises."""
    extras = _sitemap_extras(task.extras_json)
    res = parse_sitemap(
        task.body, task.content_encoding, task.final_url, allowed_domains=task.allow_domains, for_host=extras.for_host
    )
    error = res.error
    if task.truncated and (error is None or error.startswith(ERROR_MALFORMED)):  # the cut, not the file's fault
        error = f"{ERROR_TOO_LARGE}: the file passed {len(task.body)} bytes; the entries before the cut are kept"
    page = ParsedPage(size=len(task.body), error="sitemap_error" if error else None)
    page.parser_error_detail = error
    for e in res.urls:
        data = {k: v for k, v in (("lastmod", e.lastmod), ("priority", e.priority)) if v is not None}
        _sitemap_request(page, e.loc, Extras(data=data or None))
    nesting = extras.nesting or 0
    if nesting < SITEMAP_MAX_DEPTH:
        for child in res.sitemaps:
            _sitemap_request(page, child, Extras(kind="sitemap", nesting=nesting + 1, for_host=extras.for_host))
    elif res.sitemaps and error is None:  # the limit is the crawl's: said in the record, not silently dropped
        error = f"nested too deep: {len(res.sitemaps)} child sitemaps at nesting {nesting + 1} not followed"
        page.error, page.parser_error_detail = "sitemap_error", error
    page.links_total = len(res.urls) + len(res.sitemaps)
    counts = {"urls": len(res.urls), "sitemaps": len(res.sitemaps), "refused": res.refused, "invalid": res.invalid}
    page.data = {"sitemap": counts}
    return page


def _sitemap_extras(extras_json: str) -> Extras:
    """A sitemap's extras: how many indexes are above it (`nesting`, carried apart from its depth: its URLs are
    seeds at the sitemap's depth, so a seed's `--depth` never limits the nesting) and, for one that another
    host's robots.txt named, that host (`for_host`)."""
    try:
        return Extras.decode(extras_json) or Extras()
    except (InvalidExtras, ValueError):
        return Extras()


def _sitemap_request(page: ParsedPage, loc: str, extras: Extras) -> None:
    try:
        n = crawl_url(loc)
    except InvalidURL:
        return
    page.requests.append(FollowLink(n.fingerprint, n.host, n.url, extras_json=extras.encode()))
