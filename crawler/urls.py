"""Two forms of every URL: the fetch URL (what is stored, fetched and checked against robots.txt) and the dedup key.

The *fetch URL* is the URL as the page or the seed file wrote it, parsed and serialised by the WHATWG URL Standard
(ada-url, the parser Node.js uses): UTS 46 IDNA, IPv4 number forms canonicalised (`0x7f.1` -> `127.0.0.1`),
percent-encoded hosts decoded, backslashes read as `/`, tabs and newlines removed, invalid forms refused. The
fragment is dropped and nothing is reordered: a server that reads its parameters in order gets what was linked.

The *dedup key* is a canonical form of the fetch URL used only for the 8-byte fingerprint: host without a
trailing dot, percent-encoding normalised (unreserved characters decoded, hex upper-cased, unsafe bytes encoded),
empty query dropped, query parameters stably sorted by key (repeated keys keep their relative order, so `a=1&a=2`
stays distinct from `a=2&a=1`), tracking parameters (`utm_*`, `fbclid`, `gclid`, ...) dropped unless asked to
keep them. Two links that differ only there are one URL of the crawl; the first one seen is the one fetched.

Deliberate differences from WHATWG (tests/test_whatwg_urls.py lists the cases): only http and https are
crawlable; user-info (`user:pw@`) is refused, since it would be stored in Redis and printed in records and logs;
port 0 is refused (no TCP connection can be made to it: every fetch would fail); a URL longer than MAX_URL_BYTES
is refused. This module imports no asyncio: it runs in the parse pool.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ada_url._ada_wrapper import ffi, lib  # the C API: one parse and two reads per URL, no Python URL object

MAX_URL_BYTES = 8192
TRACKING_PARAMS = frozenset({"fbclid", "gclid", "dclid", "msclkid", "yclid", "mc_cid", "mc_eid", "_hsenc", "_hsmi"})
_HTTP_SCHEMES = (0, 2)  # ada SchemeType.HTTP, SchemeType.HTTPS

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters the key leaves as they are in a path or query (RFC 3986 pchar + "/" + "?"); the rest is %-encoded.
_PATH_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")
_QUERY_SAFE = _PATH_SAFE | frozenset(b"?")
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/]*$")
_PLAIN_QUERY = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*$")
# a cheap first look for tracking parameters; `_is_tracking` decides on each pair
_TRACKING = re.compile(r"(?:^|&)(?:utm_|(?:" + "|".join(sorted(TRACKING_PARAMS)) + r")(?:=|&|$))", re.IGNORECASE)


class InvalidURL(ValueError):
    """A URL that cannot be crawled; the message says why in a few words."""


@dataclass(frozen=True, slots=True)
class CrawlURL:
    """A crawlable URL: what the frontier stores for it."""

    url: str  # the fetch URL (WHATWG serialisation, no fragment): stored, leased, fetched, recorded
    host: str  # "host" or "host:port" of the fetch URL (default port omitted): politeness and robots.txt key
    fingerprint: bytes  # 8 bytes of the dedup key: crawl-wide dedup in Redis


# The names the rest of the code base used before the two forms were split; same type, same call.
NormalizedURL = CrawlURL


def fingerprint(key: str) -> bytes:
    """64-bit fingerprint (8 bytes in Redis): the chance of any collision in a 10-million-URL crawl is ~3e-6."""
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


def _utf8(text: str) -> bytes:
    """UTF-8 of a DOM string: lone surrogates become U+FFFD, as a browser's USVString conversion does."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()


def _text(view: Any) -> str:
    """A Python str of an `ada_string` (pointer and length into the URL's buffer, valid until it is freed)."""
    return ffi.unpack(view.data, view.length).decode() if view.length else ""


def fetch_form(url: str, base: str | None = None) -> tuple[str, str]:
    """(fetch URL, host) of `url` resolved against `base` per WHATWG; InvalidURL for what cannot be crawled."""
    if len(url) > MAX_URL_BYTES:
        raise InvalidURL(f"longer than {MAX_URL_BYTES} bytes")
    if base is None:
        fast = _fast(url)
        if fast is not None:
            return fast
    href = _parse(url, base)
    host = href[href.index("//") + 2 : href.index("/", href.index("//") + 2)]  # no user-info: refused below
    if host.endswith(":0"):  # valid to WHATWG, but nothing listens there
        raise InvalidURL("port out of range (0 cannot be connected to)")
    if len(href) > MAX_URL_BYTES:
        raise InvalidURL(f"longer than {MAX_URL_BYTES} bytes")
    return href, host


def _parse(url: str, base: str | None) -> str:
    """The WHATWG href of an http(s) URL without credentials, fragment dropped; InvalidURL otherwise."""
    raw = _utf8(url)
    if base is None:
        parsed = lib.ada_parse(raw, len(raw))
    else:
        braw = _utf8(base)
        parsed = lib.ada_parse_with_base(raw, len(raw), braw, len(braw))
    try:
        if not lib.ada_is_valid(parsed):
            raise InvalidURL(_why_invalid(url) if base is None else "not a valid link")
        if lib.ada_get_scheme_type(parsed) not in _HTTP_SCHEMES:
            raise InvalidURL(f"scheme {_text(lib.ada_get_protocol(parsed))} is not http or https")
        if lib.ada_has_credentials(parsed):
            raise InvalidURL("credentials in URL are refused (they would be stored and logged)")
        lib.ada_clear_hash(parsed)
        return _text(lib.ada_get_href(parsed))
    finally:
        lib.ada_free(parsed)


# URLs that are already in their WHATWG serialisation, the usual seed: lower-case http(s) scheme, a host of
# lower-case LDH labels whose last one starts with a letter (so no IPv4 parsing) and none is punycode (`xn--`
# labels are validated by UTS 46), a port without leading zeros, a path and query of characters WHATWG leaves
# as they are, no dot segment, no escape, no fragment. tests/test_urls.py checks that ada agrees on each.
_FAST = re.compile(
    r"^https?://((?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z](?:[a-z0-9-]*[a-z0-9])?(?::[1-9][0-9]{0,4})?)"
    r"(/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*)?(?:\?[A-Za-z0-9\-._~!$&()*+,;=:@/?]*)?$"
)


def _fast(url: str) -> tuple[str, str] | None:
    m = _FAST.match(url)
    if m is None or "xn--" in url or "/." in url:
        return None
    host = m.group(1)
    colon = host.find(":")
    if colon >= 0:
        port = int(host[colon + 1 :])
        if port > 65535 or port == (80 if url[4] == ":" else 443):
            return None  # out of range, or a default port WHATWG drops: the full parser says which
    if m.group(2) is None:  # "http://host" or "http://host?q": WHATWG's path is "/"
        return None
    return url, host


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_AUTHORITY = re.compile(r"^[/\\]*([^/\\?#]*)")


def _why_invalid(url: str) -> str:
    """A few words on why the WHATWG parser refused a URL written by a user (a seed): the error path only."""
    text = url.strip("".join(map(chr, range(33)))).replace("\t", "").replace("\n", "").replace("\r", "")
    m = _SCHEME.match(text)
    if m is None:
        return "scheme (none) is not http or https"
    if m.group(1).lower() not in ("http", "https"):
        return f"scheme {m.group(1).lower()}: is not http or https"
    authority = _AUTHORITY.match(text[m.end() :])
    host = authority.group(1).rsplit("@", 1)[-1] if authority else ""
    if not host:
        return "no host"
    shown = host[:80]  # after the last "@": never a password
    if host.startswith("["):
        closed = "]" in host and host.rfind(":") < host.rfind("]")
        return f"bad IPv6 address {shown}" if closed else f"bad IPv6 address or port {shown}"
    name, _, port = host.partition(":")
    if not name:
        return "no host"
    if port and (not port.isdigit() or int(port) > 65535):
        return "port out of range"
    return f"bad host name {name[:80]!r}"


def crawl_url(url: str, base: str | None = None, *, keep_tracking: bool = False) -> CrawlURL:
    """The crawlable form of `url` (resolved against `base`), or InvalidURL saying why."""
    fast = _fast(url) if base is None and len(url) <= MAX_URL_BYTES else None
    if fast is None:
        href, host = fetch_form(url, base)
        return CrawlURL(href, host, fingerprint(dedup_key(href, keep_tracking)))
    q_at = url.find("?")  # a fast URL's path is plain and its host has no trailing dot: only the query changes
    if q_at < 0:
        return CrawlURL(url, fast[1], fingerprint(url))
    query = _normalize_query(url[q_at + 1 :], keep_tracking, plain=True)
    return CrawlURL(url, fast[1], fingerprint(f"{url[:q_at]}?{query}" if query else url[:q_at]))


normalize = crawl_url  # the former name, kept while workers/ and older tests still import it


def dedup_key(fetch_url: str, keep_tracking: bool = False) -> str:
    """The canonical form of a fetch URL (see the module docstring): two URLs with one key are fetched once."""
    path_at = fetch_url.find("/", fetch_url.find("://") + 3)  # a WHATWG http(s) URL always has a path
    q_at = fetch_url.find("?", path_at)
    head = fetch_url[:path_at]
    if head.endswith(".") or ".:" in head:  # "example.com." is "example.com" to DNS; WHATWG keeps the dot
        scheme, _, hostport = head.partition("://")
        host, colon, port = hostport.rpartition(":") if ".:" in hostport else (hostport, "", "")
        head = f"{scheme}://{host.rstrip('.') or host}{colon}{port}"
    path = fetch_url[path_at:] if q_at < 0 else fetch_url[path_at:q_at]
    if "%" in path or not _PLAIN_PATH.match(path):
        path = _requote(path, _PATH_SAFE)
    if q_at < 0:
        return head + path
    query = _normalize_query(fetch_url[q_at + 1 :], keep_tracking)
    return f"{head}{path}?{query}" if query else head + path


def _requote(part: str, safe: frozenset[int]) -> str:
    """Decode %-escapes of unreserved characters, upper-case the others, encode unsafe bytes as UTF-8 escapes."""
    if "%" not in part and _PLAIN_PATH.match(part) and (safe is _QUERY_SAFE or "?" not in part):
        return part
    out: list[str] = []
    raw = part.encode("utf-8", "surrogatepass")
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25 and i + 2 < n and _is_hex(raw[i + 1 : i + 3]):
            v = int(raw[i + 1 : i + 3], 16)
            out.append(chr(v) if v in _UNRESERVED else "%" + raw[i + 1 : i + 3].decode().upper())
            i += 3
            continue
        out.append(chr(b) if b in safe else f"%{b:02X}")
        i += 1
    return "".join(out)


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)


def _normalize_query(query: str, keep_tracking: bool, plain: bool = False) -> str:
    """Each pair is re-quoted first (unless the caller knows it is `plain`), so the sort and the tracking filter
    see the normal form of the keys."""
    if not plain and ("%" in query or not _PLAIN_QUERY.match(query)):
        query = "&".join(_requote(p, _QUERY_SAFE) for p in query.split("&"))
    if "&&" in query or query.startswith("&") or query.endswith("&"):
        query = "&".join(p for p in query.split("&") if p)
    if not keep_tracking and _TRACKING.search(query):
        query = "&".join(p for p in query.split("&") if not _is_tracking(p.split("=", 1)[0]))
    if "&" not in query:
        return query
    pairs = query.split("&")
    pairs.sort(key=lambda p: p.split("=", 1)[0])  # stable: repeated keys keep their order
    return "&".join(pairs)


def _is_tracking(key: str) -> bool:
    k = key.lower()
    return k.startswith("utm_") or k in TRACKING_PARAMS


class LinkResolver:
    """`crawl_url` for the links of pages, never raising, with a bounded cache.

    Links repeat across the pages of a site (navigation, pagination), so the cache is keyed by what the result
    depends on: the href alone when it is absolute (`http://...`, `https://...`), the base's origin and the href
    when it is root-relative (`/path`), the whole base and the href otherwise. A browser's resolution depends on
    nothing more, so a hit is exactly what a miss would compute. Memory is bounded by two generations of
    `size // 2` entries. It lives in each parse process; it is not shared and needs no lock.
    """

    def __init__(self, keep_tracking: bool = False, size: int = 100_000) -> None:
        self.keep_tracking = keep_tracking
        self._half = size // 2
        self._cur: dict[str | tuple[str, str], CrawlURL | None] = {}  # key -> result (None: not crawlable)
        self._old: dict[str | tuple[str, str], CrawlURL | None] = {}
        self._base = ""  # the last base seen, and its origin: one page's links share them
        self._origin = ""

    def __call__(self, href: str, base: str) -> CrawlURL | None:
        """The link `href` on a page whose base URL is `base`; None for a link that is invalid or not http(s),
        or only a fragment of this very page."""
        key: str | tuple[str, str]
        if href.startswith(("http://", "https://")):
            key = href
            base = ""  # not needed: an absolute link stands on its own (even on a page whose base is broken)
        elif href.startswith("/") and not href.startswith(("//", "/\\")):
            if base is not self._base:
                self._base, self._origin = base, _origin(base)
            key = (self._origin, href)
        else:
            key = (base, href)
        hit = self._cur.get(key, _MISS)
        if hit is _MISS:
            hit = self._old.get(key, _MISS)
            if hit is _MISS:
                hit = self._resolve(href, base)
            self._cur[key] = hit  # type: ignore[assignment]
            if len(self._cur) >= self._half:
                self._old, self._cur = self._cur, {}
        return hit  # type: ignore[return-value]

    def _resolve(self, href: str, base: str) -> CrawlURL | None:
        if href.lstrip(" \t\r\n\f\v\x00").startswith("#"):
            return None
        try:
            return crawl_url(href, base or None, keep_tracking=self.keep_tracking)
        except InvalidURL:
            return None


_MISS = object()


def _origin(base: str) -> str:
    """`scheme://host[:port]` of a base URL, or "\x00" + base for one that is not http(s) (a key of its own)."""
    if not base.startswith(("http://", "https://")) or not base.isascii():
        return "\x00" + base
    end = base.find("/", base.find("://") + 3)
    return base if end < 0 else base[:end]


def resolve(href: str, base: str) -> str | None:
    """The fetch URL of `href` against `base` (a `<base>` or canonical link), or None: never raises."""
    try:
        return fetch_form(href, base)[0]
    except InvalidURL:
        return None


def host_of(fetch_url: str) -> str:
    """The politeness unit ("host[:port]") of a fetch URL, as the Lua scripts compute it from an entry."""
    rest = fetch_url.split("://", 1)[1]
    return rest.split("/", 1)[0]


def without_port(host: str) -> str:
    """`host[:port]` without the port (a bracketed IPv6 address keeps its brackets)."""
    return host if host.endswith("]") else host.rsplit(":", 1)[0]


def in_domain(host: str, domains: tuple[str, ...]) -> bool:
    """True when `host` (without port) is one of `domains` or a subdomain of one."""
    bare = without_port(host)
    return any(bare == d or bare.endswith("." + d) for d in domains)
