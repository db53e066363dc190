"""The one URL normaliser and fingerprint of the crawl.

Every URL that reaches the frontier, from a seed file or from a page's links, goes through `normalize()`, so
dedup is crawl-wide whichever way a URL arrives. This module imports no asyncio: it runs in the parse pool.

Normal form: scheme and host lower-cased, IDN host to punycode, default port dropped, user-info refused, path
dot-segments resolved, percent-encoding normalised (unreserved characters decoded, hex upper-cased, unsafe bytes
encoded as UTF-8), empty path -> "/", fragment dropped, empty query dropped, query parameters stably sorted by key
(the relative order of repeated keys is kept, so `a=1&a=2` stays distinct from `a=2&a=1`), tracking parameters
(`utm_*`, `fbclid`, `gclid`, ...) dropped unless asked to keep them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

MAX_URL_BYTES = 8192
DEFAULT_PORTS = {"http": 80, "https": 443}
TRACKING_PARAMS = frozenset({"fbclid", "gclid", "dclid", "msclkid", "yclid", "mc_cid", "mc_eid", "_hsenc", "_hsmi"})

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters left as they are in a path or query (RFC 3986 pchar + "/" + "?"); everything else is %-encoded.
_PATH_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")
_QUERY_SAFE = _PATH_SAFE | frozenset(b"?")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@/]*$")
_HOST_OK = re.compile(r"^[a-z0-9._\-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidURL(ValueError):
    """A URL that cannot be crawled; the message says why in a few words."""


@dataclass(frozen=True, slots=True)
class NormalizedURL:
    url: str
    host: str  # "host" or "host:port" when the port is not the default: the unit of politeness
    fingerprint: bytes  # 8 bytes: dedup key in Redis


def fingerprint(url: str) -> bytes:
    """64-bit fingerprint (8 bytes in Redis): the chance of any collision in a 10-million-URL crawl is ~3e-6."""
    return hashlib.blake2b(url.encode(), digest_size=8).digest()


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
            if v in _UNRESERVED:
                out.append(chr(v))
            else:
                out.append("%" + raw[i + 1 : i + 3].decode().upper())
            i += 3
            continue
        if b in safe:
            out.append(chr(b))
        else:
            out.append(f"%{b:02X}")
        i += 1
    return "".join(out)


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)


def _remove_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    # a trailing "." or ".." means a directory: keep the trailing slash
    if segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def _normalize_host(host: str) -> str:
    if not host:
        raise InvalidURL("no host")
    if host.startswith("["):
        try:
            ip6 = ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else host[1:])
        except ValueError:
            raise InvalidURL("bad IPv6 literal") from None
        return f"[{ip6.compressed}]"
    host = host.rstrip(".").lower()
    if not host:
        raise InvalidURL("no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidURL("bad international host name") from None
    if "%" in host:
        raise InvalidURL("escaped characters in host")
    if not _HOST_OK.match(host) or ".." in host or len(host) > 253:
        raise InvalidURL("bad host name")
    return host


def _normalize_query(query: str, keep_tracking: bool) -> str:
    """Each pair is re-quoted first, so the sort and the tracking filter see the normal form of the keys."""
    if not query:
        return ""
    pairs = [_requote(p, _QUERY_SAFE) for p in query.split("&") if p]
    if not keep_tracking:
        pairs = [p for p in pairs if not _is_tracking(p.split("=", 1)[0])]
    if len(pairs) > 1:
        pairs.sort(key=lambda p: p.split("=", 1)[0])  # stable: repeated keys keep their order
    return "&".join(pairs)


def _is_tracking(key: str) -> bool:
    k = key.lower()
    return k.startswith("utm_") or k in TRACKING_PARAMS


# Already-simple absolute URLs (lower-case host, plain path, plain query): most links on most pages.
_SIMPLE = re.compile(
    r"^(https?)://([a-z0-9][a-z0-9.\-]*[a-z0-9]|[a-z0-9])(?::(\d{1,5}))?(/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*)?"
    r"(?:\?([A-Za-z0-9\-._~!$&'()*+,;=:@/?]*))?$"
)


def _fast(url: str, keep_tracking: bool) -> NormalizedURL | None:
    m = _SIMPLE.match(url)
    if m is None:
        return None
    scheme, host, port, path, query = m.groups()
    if path and ("/." in path or "//" in path):
        return None  # dot segments and empty segments: the full path
    if ".." in host or len(host) > 253:
        return None
    if port is not None:
        p = int(port)
        if p == 0 or p > 65535:
            return None
        hostport = host if p == DEFAULT_PORTS[scheme] else f"{host}:{p}"
    else:
        hostport = host
    query = _normalize_query(query, keep_tracking) if query else ""
    out = f"{scheme}://{hostport}{path or '/'}?{query}" if query else f"{scheme}://{hostport}{path or '/'}"
    if len(out) > MAX_URL_BYTES:
        return None
    return NormalizedURL(out, hostport, fingerprint(out))


def normalize(url: str, base: str | None = None, *, keep_tracking: bool = False) -> NormalizedURL:
    """Return the normal form of `url` (resolved against `base`), or raise InvalidURL saying why."""
    url = url.strip(" \t\r\n\f\v")
    if base is None and len(url) <= MAX_URL_BYTES and "#" not in url:
        fast = _fast(url, keep_tracking)
        if fast is not None:
            return fast
    if base is not None:
        joined = join(url, base)
        if joined is None:
            raise InvalidURL("not an http(s) link")
        url = joined
    if len(url) > MAX_URL_BYTES:
        raise InvalidURL(f"longer than {MAX_URL_BYTES} bytes")
    if _CONTROL.search(url):
        raise InvalidURL("control characters in URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        msg = str(exc)
        raise InvalidURL("port out of range" if "port" in msg.lower() else f"unparsable ({msg})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidURL(f"scheme {scheme + ':' if scheme else '(none)'} is not http or https")
    netloc = parts.netloc
    if "@" in netloc:
        raise InvalidURL("credentials in URL are refused (they would be stored and logged)")
    hostname = netloc
    if hostname.startswith("["):
        hostname = hostname[: hostname.find("]") + 1] if "]" in hostname else hostname
    elif ":" in hostname:
        hostname = hostname.rsplit(":", 1)[0]
    host = _normalize_host(hostname)
    if port == 0:
        raise InvalidURL("port out of range")
    hostport = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    # re-quote first: %2E%2E is a dot segment too once decoded (RFC 3986 6.2.2)
    path = _remove_dot_segments(_requote(parts.path or "/", _PATH_SAFE))
    if not path.startswith("/"):
        path = "/" + path
    query = _normalize_query(parts.query, keep_tracking)
    out = f"{scheme}://{hostport}{path}?{query}" if query else f"{scheme}://{hostport}{path}"
    if len(out) > MAX_URL_BYTES:
        raise InvalidURL(f"longer than {MAX_URL_BYTES} bytes")
    return NormalizedURL(out, hostport, fingerprint(out))


class LinkNormalizer:
    """`normalize` for the links of pages, with the cheap joins done by hand and a bounded cache.

    Links repeat across the pages of a site (navigation, pagination, duplicates with fragments), so most
    normalisations are answered from the cache; memory is bounded by two generations of `size // 2` entries.
    It lives in each parse process; it is not shared and needs no lock.
    """

    def __init__(self, keep_tracking: bool = False, size: int = 100_000) -> None:
        self.keep_tracking = keep_tracking
        self._half = size // 2
        self._cur: dict[str, NormalizedURL | None] = {}
        self._old: dict[str, NormalizedURL | None] = {}

    def __call__(self, href: str, base: str, origin: str) -> NormalizedURL | None:
        """`origin` is `scheme://host[:port]` of `base`. None for a link that is not crawlable."""
        absolute = join(href, base, origin)
        if absolute is None:
            return None
        hit = self._cur.get(absolute, _MISS)
        if hit is _MISS:
            hit = self._old.get(absolute, _MISS)
            if hit is _MISS:
                try:
                    hit = normalize(absolute, keep_tracking=self.keep_tracking)
                except InvalidURL:
                    hit = None
            self._cur[absolute] = hit  # type: ignore[assignment]
            if len(self._cur) >= self._half:
                self._old, self._cur = self._cur, {}
        return hit  # type: ignore[return-value]


_MISS = object()


def join(href: str, base: str, origin: str | None = None) -> str | None:
    """Resolve `href` against `base` (RFC 3986 5.2, dot segments left for `normalize`); None for a link that is
    no http(s) URL or only a fragment of this page. `origin` (`scheme://authority` of base) saves a split."""
    href = href.strip(" \t\r\n\f\v")
    if href.startswith("#"):
        return None  # a fragment of this very page
    hash_at = href.find("#")
    if hash_at >= 0:
        href = href[:hash_at]
    if href.startswith(("http://", "https://")):
        return href
    if not href:
        return base
    if href.startswith(("javascript:", "mailto:", "data:", "tel:")):
        return None
    if origin is None:
        origin = _origin(base)
    if href.startswith("//"):
        return base.split(":", 1)[0] + ":" + href
    if href.startswith("/"):
        return origin + href
    if href.startswith("?"):
        q = base.find("?")
        return (base if q < 0 else base[:q]) + href
    if ":" in href.split("/", 1)[0]:
        return urljoin(base, href)  # another scheme, or a scheme-relative oddity: let urllib decide
    # a relative path: the base's directory + href; `normalize` resolves the dot segments
    path_end = base.find("?")
    b = base if path_end < 0 else base[:path_end]
    if b.count("/") < 3:  # "http://host" with no path
        return b + "/" + href
    return b[: b.rfind("/") + 1] + href


def _origin(url: str) -> str:
    scheme, rest = url.split("://", 1) if "://" in url else ("http", url)
    return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0]}"


def origin_of(normalized_url: str) -> str:
    """`scheme://host[:port]` of a normalised URL."""
    scheme, rest = normalized_url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def host_of(normalized_url: str) -> str:
    """The politeness unit ("host[:port]") of an already normalised URL, as the Lua scripts compute it."""
    rest = normalized_url.split("://", 1)[1]
    return rest.split("/", 1)[0]


def in_domain(host: str, domains: tuple[str, ...]) -> bool:
    """True when `host` (without port) is one of `domains` or a subdomain of one."""
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return any(bare == d or bare.endswith("." + d) for d in domains)
