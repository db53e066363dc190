"""Sitemap parsing (sitemaps.org protocol): a pure function for the parse pool, no asyncio, no I/O.

`parse_sitemap(body, content_encoding, url)` turns one fetched sitemap (an `<urlset>`, a `<sitemapindex>`, an RSS
2.0 or Atom feed, or a plain-text list of URLs, raw or gzip'd) into a `SitemapResult`. Memory stays bounded
whatever the input:

- Streaming. The body is decompressed in 64 KiB pieces (Content-Encoding gzip/deflate/br, then a gzip layer found
  by its magic bytes, as a `.xml.gz` file is) and fed to expat piece by piece; handlers keep only the entry being
  read. No tree is built, so a 50 MB sitemap costs the output list and one piece at a time.
- The protocol's limits: more than `max_urls` entries, or more than `max_bytes` decompressed, stop the parse with
  an error (`too many URLs`, `too large`) and keep the entries read up to the limit.
- No entities, no external references: any DOCTYPE (which is where entities and external DTDs are declared) is
  refused before its content is read (`entity refused`), so neither billion laughs nor XXE can start. This is what
  defusedxml does with the same expat hooks; done here, it needs no dependency. The five predefined XML entities
  (`&amp;` ...) and character references still work: they need no declaration.
- Malformed XML stops the parse with `sitemap_error: <expat's message>`, keeping the entries completed before the
  error: each of them was a whole, well-formed `<url>` element, and the frontier deduplicates a later retry.
- Cross-submission rule: a `<loc>` whose host is not the sitemap's own is refused (counted in `refused`) unless it
  is in `allowed_domains` (a domain or a subdomain of one, as `crawler.urls.in_domain`). The same rule applies to
  the child sitemaps of an index. A sitemap that another host's robots.txt names (`for_host`) speaks for that
  host: its `<loc>`s must be there, and its child sitemaps on its own host (sitemaps.org, "Sitemaps & Cross
  Submits").
- Entries are returned as written (whitespace stripped), not normalised or deduplicated: the worker enqueues them
  like links, and the frontier canonicalises and deduplicates crawl-wide.
"""

from __future__ import annotations

import codecs
import email.utils
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from xml.parsers import expat

from crawler.urls import InvalidURL, fetch_form, in_domain, without_port

MAX_URLS = 50_000  # sitemaps.org: per file, for a urlset and for an index alike
MAX_BYTES = 50 * 1024 * 1024  # sitemaps.org: 50 MiB uncompressed
MAX_LOC_CHARS = 2048  # sitemaps.org: "less than 2,048 characters"
MAX_FIELD_CHARS = 4096  # text kept per field; longer is an invalid entry, never a growing buffer
PIECE = 64 * 1024  # decompressed bytes per piece fed to the parser
GZIP_MAGIC = b"\x1f\x8b"

# The stable error kinds, first word(s) of SitemapResult.error.
ERROR_MALFORMED = "sitemap_error"
ERROR_TOO_MANY = "too many URLs"
ERROR_TOO_LARGE = "too large"
ERROR_ENTITY = "entity refused"


@dataclass(frozen=True, slots=True)
class SitemapEntry:
    """One `<url>`: its `<loc>`, and `<lastmod>` (W3C datetime, as written) and `<priority>` (0.0-1.0) if valid."""

    loc: str
    lastmod: str | None = None
    priority: float | None = None


@dataclass(frozen=True, slots=True)
class SitemapResult:
    """What one sitemap file held.

    `urls`: the accepted entries of a `<urlset>` (or text sitemap), in document order. `sitemaps`: the accepted
    child sitemap URLs of a `<sitemapindex>`. `error`: None, or a kind (see ERROR_*) then ": detail"; the entries
    read before it are kept. `refused`: entries on another host (cross-submission rule). `invalid`: entries without
    a usable `<loc>` (missing, not http(s), too long).
    """

    urls: tuple[SitemapEntry, ...] = ()
    sitemaps: tuple[str, ...] = ()
    error: str | None = None
    refused: int = 0
    invalid: int = 0
    is_index: bool = False


class _Stop(Exception):
    """Ends a parse early; `error` becomes SitemapResult.error."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class _Entries:
    """Accepts or refuses each entry against the host rule and counts it against the limit."""

    def __init__(
        self, sitemap_url: str, max_urls: int, allowed_domains: tuple[str, ...], for_host: str | None = None
    ) -> None:
        self.host = _http_host(sitemap_url) or ""  # child sitemaps: on the index's own host
        self.url_host = without_port(for_host) if for_host else self.host  # URLs: on the host the sitemap speaks for
        self.max_urls = max_urls
        self.allowed_domains = tuple(d.lower().lstrip(".") for d in allowed_domains)
        self.seen = 0  # entries counted against max_urls: accepted, refused and invalid alike
        self.urls: list[SitemapEntry] = []
        self.sitemaps: list[str] = []
        self.refused = 0
        self.invalid = 0

    def add(self, loc: str, lastmod: str | None, priority: str | None, *, child_sitemap: bool) -> None:
        self.seen += 1
        if self.seen > self.max_urls:
            raise _Stop(f"{ERROR_TOO_MANY}: more than {self.max_urls} entries")
        host = _http_host(loc)
        if host is None:
            self.invalid += 1
        elif host != (self.host if child_sitemap else self.url_host) and not in_domain(host, self.allowed_domains):
            self.refused += 1
        elif child_sitemap:
            self.sitemaps.append(loc)
        else:
            self.urls.append(SitemapEntry(loc, _lastmod(lastmod), _priority(priority)))

    def result(self, error: str | None, is_index: bool) -> SitemapResult:
        return SitemapResult(tuple(self.urls), tuple(self.sitemaps), error, self.refused, self.invalid, is_index)


def _http_host(loc: str) -> str | None:
    """The host (no port) an absolute http(s) URL of protocol length is fetched from, else None. Read by the
    crawl's one URL parser (WHATWG): `urlsplit` takes `http://evil.test\\@shop.test/` for shop.test, where a
    browser and the fetcher go to evil.test, so a rule checked with it could be walked around."""
    if not loc or len(loc) >= MAX_LOC_CHARS:
        return None
    try:
        _, host = fetch_form(loc)
    except InvalidURL:
        return None
    return without_port(host)


def _lastmod(value: str | None) -> str | None:
    return value if value and len(value) <= 64 else None


def _priority(value: str | None) -> float | None:
    try:
        p = float(value) if value else None
    except ValueError:
        return None
    return p if p is not None and 0.0 <= p <= 1.0 else None


# root element -> (the depth of an entry, its local name); sitemaps.org also accepts RSS 2.0 and Atom feeds
_SHAPES = {"urlset": (2, "url"), "sitemapindex": (2, "sitemap"), "rss": (3, "item"), "feed": (2, "entry")}
# per root: an entry's child element -> the field it fills (an Atom <link> fills `loc` from its href, in `start`)
_FIELDS = {
    "urlset": {"loc": "loc", "lastmod": "lastmod", "priority": "priority"},
    "sitemapindex": {"loc": "loc", "lastmod": "lastmod"},
    "rss": {"link": "loc", "pubDate": "lastmod"},
    "feed": {"updated": "lastmod"},
}


class _XmlHandler:
    """expat callbacks for `<urlset>`/`<sitemapindex>` and the feeds the protocol accepts (RSS 2.0 `<item><link>`,
    Atom `<entry><link href>`): holds only the entry being read. Any namespace is accepted (sitemaps in the wild
    get it wrong); elements are matched by local name at their depth."""

    def __init__(self, entries: _Entries) -> None:
        self.entries = entries
        self.depth = 0
        self.root: str | None = None
        self.entry_depth = 0
        self.entry_name = ""
        self.fields: dict[str, str] = {}
        self.entry: dict[str, str] | None = None  # fields of the entry being read
        self.field: str | None = None  # the field whose text is being read
        self.text: list[str] = []
        self.text_len = 0

    def start(self, name: str, attrs: dict[str, str]) -> None:
        local = name.rpartition(" ")[2]
        self.depth += 1
        if self.depth == 1:
            if local not in _SHAPES:
                raise _Stop(f"{ERROR_MALFORMED}: root element <{local}> is not urlset, sitemapindex, rss or feed")
            self.root = local
            self.entry_depth, self.entry_name = _SHAPES[local]
            self.fields = _FIELDS[local]
        elif self.depth == self.entry_depth and local == self.entry_name:
            self.entry = {}
        elif self.depth == self.entry_depth + 1 and self.entry is not None:
            if local in self.fields:
                self.field, self.text, self.text_len = self.fields[local], [], 0
            elif self.root == "feed" and local == "link" and "loc" not in self.entry and _alternate(attrs):
                self.entry["loc"] = attrs.get("href", "").strip()[: MAX_FIELD_CHARS + 1]

    def chars(self, data: str) -> None:
        if self.field is not None and self.text_len <= MAX_FIELD_CHARS:
            self.text.append(data)
            self.text_len += len(data)

    def end(self, _name: str) -> None:
        if self.depth == self.entry_depth + 1 and self.field is not None and self.entry is not None:
            if self.text_len <= MAX_FIELD_CHARS:
                self.entry[self.field] = "".join(self.text).strip()
            self.field, self.text = None, []
        elif self.depth == self.entry_depth and self.entry is not None:
            entry, self.entry = self.entry, None
            lastmod = entry.get("lastmod")
            if self.root == "rss" and lastmod:
                lastmod = _rfc822_to_w3c(lastmod)
            is_index = self.root == "sitemapindex"
            self.entries.add(entry.get("loc", ""), lastmod, entry.get("priority"), child_sitemap=is_index)
        self.depth -= 1


def _alternate(attrs: dict[str, str]) -> bool:
    """An Atom `<link>` to the entry's page itself (no `rel`, or `alternate`), not its comments or enclosure."""
    return attrs.get("rel", "alternate") == "alternate"


def _rfc822_to_w3c(value: str) -> str | None:
    """An RSS `pubDate` (RFC 822: `Tue, 01 Dec 2026 10:00:00 GMT`) as a W3C datetime, the form `<lastmod>` has."""
    try:
        return email.utils.parsedate_to_datetime(value).isoformat()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _refuse(*_args: Any) -> NoReturn:
    raise _Stop(f"{ERROR_ENTITY}: DOCTYPE, entity declarations and external references are not accepted")


def _refuse_external(*_args: Any) -> int:
    _refuse()
    return 0  # never reached: expat's signature for this handler wants an int


def _xml_parser(handler: _XmlHandler) -> Any:
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = handler.start
    parser.EndElementHandler = handler.end
    parser.CharacterDataHandler = handler.chars
    # Refused before their content is read: no entity is ever declared, so none can be expanded or fetched.
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse_external
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    return parser


def _parse_xml(pieces: Iterable[bytes], entries: _Entries) -> tuple[str | None, bool]:
    """(error, is_index) after feeding every piece to expat."""
    handler = _XmlHandler(entries)
    parser = _xml_parser(handler)
    try:
        for piece in pieces:
            parser.Parse(piece, False)
        parser.Parse(b"", True)
    except _Stop as stop:
        return stop.error, handler.root == "sitemapindex"
    except expat.ExpatError as exc:
        return f"{ERROR_MALFORMED}: {expat.ErrorString(exc.code)} at line {exc.lineno}", handler.root == "sitemapindex"
    except LookupError as exc:  # a declared encoding Python has no codec for
        return f"{ERROR_MALFORMED}: {exc}", handler.root == "sitemapindex"
    return None, handler.root == "sitemapindex"


def _parse_text(pieces: Iterable[bytes], entries: _Entries) -> str | None:
    """A text sitemap: one URL per line, UTF-8. A line longer than the URL limit is an invalid entry."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    rest = ""
    try:
        for piece in pieces:
            lines = (rest + decoder.decode(piece)).split("\n")
            rest = lines.pop()
            if len(rest) > MAX_FIELD_CHARS:  # an endless line: count it once, keep nothing of it
                entries.add("", None, None, child_sitemap=False)
                rest = ""
            for line in lines:
                _text_line(line, entries)
        _text_line(rest + decoder.decode(b"", True), entries)
    except _Stop as stop:
        return stop.error
    return None


def _text_line(line: str, entries: _Entries) -> None:
    line = line.strip().lstrip("\ufeff")
    if line:
        entries.add(line, None, None, child_sitemap=False)


def _gunzip(pieces: Iterable[bytes], wbits: int = 47) -> Iterator[bytes]:
    """Inflate gzip or zlib data (wbits 47 detects the header), across concatenated members, PIECE at a time."""
    d = zlib.decompressobj(wbits)
    for data in pieces:
        while data:
            yield d.decompress(data, PIECE)
            data = d.unconsumed_tail
            if d.eof:
                data, d = d.unused_data, zlib.decompressobj(wbits)
    yield d.flush()  # all input was consumed (no unconsumed tail): what is left is at most a window's worth


def _unbrotli(pieces: Iterable[bytes]) -> Iterator[bytes]:
    import brotli

    dec = brotli.Decompressor()
    for data in pieces:
        out = dec.process(data, output_buffer_limit=PIECE)
        yield out
        while not dec.can_accept_more_data():
            yield dec.process(b"", output_buffer_limit=PIECE)


_DECODERS: dict[str, Callable[[Iterable[bytes]], Iterator[bytes]]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _gunzip,
    "br": _unbrotli,
}


def _decoded(body: bytes, content_encoding: str | None, max_bytes: int) -> Iterator[bytes]:
    """The decompressed document in pieces; raises _Stop past max_bytes or on corrupt compressed data."""
    pieces: Iterator[bytes] = iter([body[i : i + PIECE] for i in range(0, len(body), PIECE)])
    for enc in [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]:
        if enc in _DECODERS:
            pieces = _DECODERS[enc](pieces)
        elif enc != "identity":
            raise _Stop(f"{ERROR_MALFORMED}: unsupported content encoding {enc!r}")
    first = _first_nonempty(pieces)
    if first[:2] == GZIP_MAGIC:  # a .xml.gz file, served without (or under) a content encoding
        pieces = _gunzip(_prepend(first, pieces))
        first = _first_nonempty(pieces)
    total = 0
    for piece in _prepend(first, pieces):
        total += len(piece)
        if total > max_bytes:  # the bytes up to the cap are still parsed: their complete entries are kept
            yield piece[: len(piece) - (total - max_bytes)]
            raise _Stop(f"{ERROR_TOO_LARGE}: more than {max_bytes} bytes uncompressed")
        yield piece


def _first_nonempty(pieces: Iterator[bytes]) -> bytes:
    return next((p for p in pieces if p), b"")


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def parse_sitemap(
    body: bytes,
    content_encoding: str | None,
    url: str,
    *,
    max_urls: int = MAX_URLS,
    max_bytes: int = MAX_BYTES,
    allowed_domains: tuple[str, ...] = (),
    for_host: str | None = None,
) -> SitemapResult:
    """Parse one sitemap file fetched from `url` (body as transferred). Never raises for bad input: see the
    module docstring for what each outcome means. Pure and picklable: runs in the parse pool.

    `for_host`: the host whose robots.txt named this sitemap, when it is on another host (cross-submission: the
    robots.txt vouches for it); its URLs must then be on `for_host`, its child sitemaps on its own host."""
    entries = _Entries(url, max_urls, allowed_domains, for_host)
    pieces = _decoded(body, content_encoding, max_bytes)
    try:
        first = _first_nonempty(pieces)
    except Exception as exc:  # _Stop (too large, bad encoding), zlib.error, brotli.error
        return entries.result(_decode_error(exc), False)
    if not first.strip():
        return entries.result(f"{ERROR_MALFORMED}: empty document", False)
    document = _guarded(_prepend(first, pieces))
    if first.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<" or first[:2] in (b"\xff\xfe", b"\xfe\xff"):
        error, is_index = _parse_xml(document, entries)
    else:
        error, is_index = _parse_text(document, entries), False
    return entries.result(error, is_index)


def _guarded(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Turns a decompression failure in mid-document into a _Stop, which both parsers report as their error."""
    try:
        yield from pieces
    except _Stop:
        raise
    except Exception as exc:  # zlib.error, brotli.error: corrupt compressed data
        raise _Stop(_decode_error(exc)) from exc


def _decode_error(exc: BaseException) -> str:
    if isinstance(exc, _Stop):
        return exc.error
    return f"{ERROR_MALFORMED}: corrupt compressed data ({exc})"
