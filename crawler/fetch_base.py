"""What every fetcher promises: the `FetchResult` it returns, the `FetcherLike` interface, and the pieces both
HTTP clients share (the attempt itself, `RedirectingFetcher.fetch`; redirect targets through the SSRF guard;
crawl-wide headers; header limits; the body caps).

Two fetchers implement the interface: `crawler.fetch.Fetcher` (aiohttp) and `crawler.fetch_curl.CurlFetcher`
(curl_cffi: a browser's TLS fingerprint and HTTP/2). The pipeline sees only this module's types, so the choice
(`--fetcher`) changes nothing above the fetch layer.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

from yarl import URL

from crawler.errors import BlockedAddress, BodyTooLarge, FetchError, InvalidResponse, InvalidTarget
from crawler.proxies import ProxyChoice
from crawler.ssrf import TrustCache

if TYPE_CHECKING:
    from crawler.settings import Settings

CHUNK = 64 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
ROBOTS_MAX_REDIRECTS = 5  # RFC 9309 2.3.1.2: follow at least five
HTML_TYPES = ("text/html", "application/xhtml+xml")
SITEMAP_MAX_BYTES = 50 * 1024 * 1024  # sitemaps.org: a sitemap file is at most 50 MiB uncompressed
HOP_BODY_MAX = 64 * 1024  # a redirect's body is kept (for a WARC record) up to this; past it, cut and counted
MAX_HEADERS = 128  # aiohttp's limit; the curl fetcher applies the same so both refuse the same floods
MAX_FIELD_BYTES = 16 * 1024  # one header line, name and value
# Content codings the parse pool can undo (crawler.parse.decompress); nothing else is asked for.
DECODABLE_ENCODINGS = "gzip, deflate, br"

RawHeaders = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Hop:
    """One redirect response, as received: what a WARC writer needs for its own response record."""

    url: str  # the URL requested on this hop
    status: int
    reason: str
    http_version: str  # "1.0", "1.1", "2"
    raw_headers: RawHeaders  # in order, as received (repeated names kept)
    request_headers: RawHeaders  # sent on this hop (raw: the WARC writer redacts; never log them)
    body: bytes  # the raw bytes, cut at HOP_BODY_MAX (`bytes` says whether it was)
    bytes: int  # body bytes received
    sent_at: datetime | None = None  # when this hop's request was sent (its WARC-Date)


@dataclass(slots=True)
class FetchResult:
    url: str
    final_url: str
    status: int
    content_type: str  # media type only, lower-cased ("" when absent)
    charset: str | None
    content_encoding: str
    body: bytes | None  # raw (maybe compressed) bytes: HTML, or any type with keep_body; None for 204/304/HEAD
    bytes: int  # bytes received (raw); for HTML the parse pool reports the decompressed size
    elapsed_ms: float  # to 0.1 ms: a 2 ms answer must not read as 1 or 2
    retry_after: str | None
    redirects: int
    http_version: str = "1.1"  # of the final response: "1.0", "1.1", "2"
    peer_ip: str | None = None  # the address connected to (the gateway's, through a proxy)
    reason: str = ""
    raw_headers: RawHeaders = ()  # final response headers in order, as received
    request_headers: RawHeaders = ()  # final request's headers (raw: the WARC writer redacts; never log them)
    hops: tuple[Hop, ...] = ()  # the redirects before the final response, in order
    truncated: bool = False  # the body is cut at the cap (a sitemap's, or inside BodyTooLarge.partial for the archive)
    sent_at: datetime | None = None  # when the final request was sent (after the hops): its WARC-Date

    @property
    def is_html(self) -> bool:
        return self.content_type in HTML_TYPES or (self.content_type == "" and self.body is not None)

    def __repr__(self) -> str:  # headers may carry cookies: never in a repr
        return (
            f"FetchResult({self.final_url!r}, status={self.status}, http_version={self.http_version!r}, "
            f"bytes={self.bytes}, redirects={self.redirects})"
        )


@contextlib.contextmanager
def hops_on_error(hops: list[Hop]) -> Iterator[None]:
    """A fetch that fails after redirects answered (too many of them, a target refused, a timeout on the next
    hop) hands those answers on in `FetchError.hops`: the archive keeps them, as it keeps a completed chain's."""
    try:
        yield
    except FetchError as exc:
        exc.hops = tuple(hops)
        raise


def body_cap(max_body_bytes: int, sitemap: bool) -> int:
    """The bytes a response body may have. A sitemap's file may be 50 MiB uncompressed (the protocol's limit), more
    than a page's default cap: it gets at least that, so a protocol-sized sitemap is never refused as too large."""
    return max(max_body_bytes, SITEMAP_MAX_BYTES) if sitemap else max_body_bytes


def within_cap(result: FetchResult, over: bool, cap: int, sitemap: bool = False) -> FetchResult:
    """The result, or, when its body passed `cap` (`over`: the fetcher read to the cap and kept the body cut
    there, as it does with `--warc` and for a sitemap), that response marked truncated: a sitemap's is returned
    (its entries before the cut are expanded, and the overflow recorded), a page's is raised inside
    BodyTooLarge, which the archive writes with `WARC-Truncated`. A fetcher that does not keep cut bodies
    raises BodyTooLarge itself, as the body passes the cap."""
    if not over:
        return result
    if sitemap:
        return replace(result, truncated=True)
    raise BodyTooLarge(f"body passed {cap} bytes", replace(result, truncated=True))


def answered(result: FetchResult | None, error: FetchError | None) -> FetchResult | None:
    """The response an attempt got: its result, or the one cut at the cap that BodyTooLarge carries (`--warc`);
    None when nothing came back."""
    if result is None and isinstance(error, BodyTooLarge):
        return error.partial
    return result


def cut(buf: bytearray, cap: int) -> tuple[bytes, bool]:
    """(the body, True) cut at `cap` when it passed it, else (the body, False): one copy either way."""
    if len(buf) > cap:
        return bytes(memoryview(buf)[:cap]), True
    return bytes(buf), False


Resp = TypeVar("Resp")  # a client's response (head) type


class RedirectingFetcher(Generic[Resp]):
    """One attempt, the same way for every client: redirects followed hop by hop by the client's `_open` (each
    hop kept for the archive, and handed on in `FetchError.hops` when the attempt fails), then the final
    response turned into a FetchResult by its `_result`. A fetcher subclasses this and brings the client."""

    settings: Settings
    keep_truncated: bool  # --warc: a page's body past the cap is read to it and handed on cut (BodyTooLarge.partial)

    def _keeps_cut(self, declared: int | None, cap: int, keep_body: bool) -> bool:
        """Whether a body past `cap` is read up to it and kept cut (`--warc`, or a sitemap); when it is not, a
        Content-Length past the cap is refused before a byte of the body is paid for."""
        keep_cut = self.keep_truncated or keep_body
        if declared is not None and declared > cap and not keep_cut:
            raise BodyTooLarge(f"Content-Length {declared} > {cap}")
        return keep_cut

    def _open(
        self,
        url: str,
        proxy: ProxyChoice | None,
        max_redirects: int,
        headers: Mapping[str, str] | None = None,
        hops: list[Hop] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[tuple[Resp, int, datetime]]:
        """Yields (final response, redirects followed, when its request was sent); appends each redirect to
        `hops`."""
        raise NotImplementedError

    async def _result(
        self,
        url: str,
        resp: Resp,
        proxy: ProxyChoice | None,
        started: float,
        redirects: int,
        hops: tuple[Hop, ...],
        keep_body: bool = False,
        sent_at: datetime | None = None,
    ) -> FetchResult:
        raise NotImplementedError

    async def fetch(
        self, url: str, proxy: ProxyChoice | None, headers: Mapping[str, str] | None = None, keep_body: bool = False
    ) -> FetchResult:
        """One attempt, redirects included (see FetcherLike)."""
        started = time.monotonic()
        hops: list[Hop] = []
        with hops_on_error(hops):
            max_redirects = self.settings.fetch.max_redirects
            async with self._open(url, proxy, max_redirects, headers, hops) as (resp, redirects, sent_at):
                return await self._result(url, resp, proxy, started, redirects, tuple(hops), keep_body, sent_at)
        raise AssertionError("unreachable")  # pragma: no cover


@runtime_checkable
class FetcherLike(Protocol):
    """The fetch layer's contract, whichever HTTP client is behind it.

    `fetch` makes one attempt (redirects followed hop by hop, each target through the SSRF guard) and returns
    a FetchResult for any HTTP status, or raises a `crawler.errors.FetchError` (never a client library's
    exception). A 304 to a conditional request is a normal result (status 304, body None). `keep_body` (a sitemap)
    keeps this response's body whatever its type, under `body_cap`, and returns one past it cut (`truncated`).
    `headers` are added to (and override) the crawl-wide and profile headers for this request only.
    `fetch_small` is for robots.txt: (status, body decoded up to `cap`, cut there, never dropped); it raises
    FetchError when there is no answer (the robots cache keeps it as the cause) and ProxyAuthError on a 407.
    `aclose` releases the connections; the fetcher is unusable afterwards.
    """

    async def fetch(
        self, url: str, proxy: ProxyChoice | None, headers: Mapping[str, str] | None = None, keep_body: bool = False
    ) -> FetchResult: ...

    async def fetch_small(self, url: str, proxy: ProxyChoice | None, cap: int = 512 * 1024) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


async def next_hop(trust: TrustCache | None, here: URL, location: str) -> URL:
    """The redirect target `location` seen from `here`, refused unless http(s) and (SSRF guard on) not a
    private literal address. Names are checked on their resolved addresses by each fetcher's resolver."""
    try:
        target = here.join(URL(location))
    except ValueError:
        raise InvalidTarget("redirect to an unparsable URL") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise InvalidTarget(f"redirect to a {target.scheme or 'relative'} URL")
    host = target.host.lower()
    if trust is not None and await trust.refuses(host):
        raise BlockedAddress(f"redirect to private address {host}")
    return target


def crawl_headers(header_pairs: tuple[tuple[str, str], ...], cookies: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """`--header "Name: value"` and `--cookie "name=value"` (validated pairs from the settings) as one header
    mapping, the cookies joined into one Cookie header as a browser sends them."""
    out: dict[str, str] = dict(header_pairs)
    if cookies:
        jar = "; ".join(f"{name}={value}" for name, value in cookies)
        out["Cookie"] = f"{out['Cookie']}; {jar}" if out.get("Cookie") else jar
    return out


def merged(*layers: Mapping[str, str] | None) -> dict[str, str]:
    """Header layers, later ones winning case-insensitively (the later spelling is kept)."""
    out: dict[str, str] = {}
    lower: dict[str, str] = {}
    for layer in layers:
        for name, value in (layer or {}).items():
            old = lower.pop(name.lower(), None)
            if old is not None:
                del out[old]
            out[name] = value
            lower[name.lower()] = name
    return out


def check_header_limits(raw: RawHeaders) -> None:
    """InvalidResponse for a header flood: more than MAX_HEADERS lines, or one past MAX_FIELD_BYTES."""
    if len(raw) > MAX_HEADERS:
        raise InvalidResponse(f"invalid response: {len(raw)} header lines (limit {MAX_HEADERS})")
    for name, value in raw:
        if len(name) + len(value) + 2 > MAX_FIELD_BYTES:
            raise InvalidResponse(f"invalid response: header {name[:40]!r} is longer than {MAX_FIELD_BYTES} bytes")


def decode_prefix(raw: bytes, encoding: str, cap: int) -> bytes:
    """Up to `cap` decoded bytes of a (possibly cut) compressed body: a prefix, never an error past the cap."""
    enc = encoding.strip().lower()
    if enc in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(47 if enc != "deflate" else 15)  # 47: gzip or zlib header, auto-detected
        try:
            return d.decompress(raw, cap)
        except zlib.error:
            return b""
    from crawler.parse import decompress

    try:
        return decompress(raw, enc, cap)
    except Exception:  # brotli past the cap, or a body that is not what its header says: nothing usable
        return b""
