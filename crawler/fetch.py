"""One fetch attempt through the gateway: stream the body in chunks under a size cap, translate errors once.

One `aiohttp.ClientSession` per worker process. Bodies arrive raw (`auto_decompress=False`) and are decompressed
in the parse pool with an output cap, which keeps decompression off the event loop and makes a compression bomb
cost at most the cap. Non-HTML bodies are counted, not kept: the record says status, type and size.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

from crawler.errors import (
    BlockedAddress,
    BodyTooLarge,
    ConnectError,
    FetchError,
    FetchTimeout,
    GatewayUnreachable,
    InvalidResponse,
    InvalidTarget,
    ProxyAuthError,
    ProxyError,
    TooManyRedirects,
)
from crawler.gateway_slots import GatewaySlots
from crawler.proxies import ProxyChoice
from crawler.robots import MAX_ROBOTS_BYTES
from crawler.settings import Settings
from crawler.ssrf import BlockedAddressOSError, GuardedResolver, TrustCache

CHUNK = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
ROBOTS_MAX_REDIRECTS = 5  # RFC 9309 2.3.1.2: follow at least five
HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass(slots=True)
class FetchResult:
    url: str
    final_url: str
    status: int
    content_type: str  # media type only, lower-cased ("" when absent)
    charset: str | None
    content_encoding: str
    body: bytes | None  # raw (maybe compressed) bytes, HTML only
    bytes: int  # bytes received (raw); for HTML the parse pool reports the decompressed size
    elapsed_ms: int
    retry_after: str | None
    redirects: int

    @property
    def is_html(self) -> bool:
        return self.content_type in HTML_TYPES or (self.content_type == "" and self.body is not None)


def make_session(settings: Settings, trust: TrustCache | None = None) -> aiohttp.ClientSession:
    """The process's one session: pooled keep-alive connections sized from the settings, a DNS cache.

    With `trust` (the SSRF guard on), names are resolved through `GuardedResolver` (redirect targets are checked
    by `Fetcher`, which follows redirects itself). With a fleet-wide connection cap, connections are not kept alive.
    """
    force_close = settings.proxy.max_connections is not None and bool(settings.proxy.urls)
    connector = aiohttp.TCPConnector(
        limit=settings.concurrency,
        limit_per_host=0,  # politeness is the frontier's job, crawl-wide; the gateway is one "host" here
        ttl_dns_cache=300,
        use_dns_cache=True,
        keepalive_timeout=None if force_close else 30,
        force_close=force_close,
        resolver=GuardedResolver(trust) if trust is not None and not settings.proxy.urls else None,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.fetch.timeout_s,
        sock_connect=settings.fetch.connect_timeout_s,
        sock_read=settings.fetch.read_timeout_s,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        headers={
            "User-Agent": settings.fetch.user_agent,
            "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            "Accept-Encoding": "gzip, deflate, br",
        },
        cookie_jar=aiohttp.DummyCookieJar(),  # a crawler has no cookie state; a jar per site grows without bound
        trust_env=False,
        max_line_size=16 * 1024,
        max_field_size=16 * 1024,
    )


@contextlib.contextmanager
def translate_errors(via_proxy: bool) -> Iterator[None]:
    """The one place aiohttp's exceptions become ours."""
    try:
        yield
    except FetchError:
        raise
    except aiohttp.TooManyRedirects:
        raise TooManyRedirects("too many redirects") from None
    except aiohttp.ClientHttpProxyError as exc:
        if exc.status == 407:
            raise ProxyAuthError("gateway refused the credentials (407)") from None
        raise ProxyError(f"gateway answered {exc.status} to CONNECT") from None
    except aiohttp.ClientProxyConnectionError as exc:
        raise GatewayUnreachable(f"cannot connect to the gateway: {exc.os_error.strerror or exc}") from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, BlockedAddressOSError):
            raise BlockedAddress(str(exc.os_error)) from None
        raise ConnectError(exc.__class__.__name__) from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise FetchTimeout("deadline passed") from None
    except aiohttp.ClientResponseError as exc:  # bad status line, headers too large, ...
        raise InvalidResponse(f"invalid response: {exc.message[:100]}") from None
    except aiohttp.InvalidURL as exc:
        raise InvalidTarget(f"invalid URL: {str(exc)[:100]}") from None
    except (
        aiohttp.ClientPayloadError,
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
        aiohttp.ClientConnectionError,
        ConnectionError,
    ) as exc:
        kind = "proxy" if via_proxy and isinstance(exc, aiohttp.ClientProxyConnectionError) else "connect"
        raise (ProxyError if kind == "proxy" else ConnectError)(f"{exc.__class__.__name__}") from None
    except aiohttp.ClientError as exc:
        raise ConnectError(exc.__class__.__name__) from None


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


class Fetcher:
    """Fetches one URL per call. Holds no per-URL state, so memory does not grow with the crawl."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        slots: GatewaySlots | None = None,
        trust: TrustCache | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.slots = slots  # the fleet-wide gateway connection cap, when set
        self.trust = trust  # the SSRF guard, when on: checks every redirect target

    def _slot(self, proxy: ProxyChoice | None) -> contextlib.AbstractAsyncContextManager[None]:
        if proxy is not None and self.slots is not None:
            return self.slots.slot()
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return (
            f"Fetcher(max_body_bytes={self.settings.fetch.max_body_bytes}, timeout_s={self.settings.fetch.timeout_s})"
        )

    @contextlib.asynccontextmanager
    async def _open(
        self, url: str, proxy: ProxyChoice | None, max_redirects: int
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, int]]:
        """GET `url` under the fleet slot, the total deadline and the error translation, following redirects here,
        hop by hop, so every target passes the SSRF guard. Yields (final response, redirects followed)."""
        async with self._slot(proxy), contextlib.AsyncExitStack() as stack:
            stack.enter_context(translate_errors(proxy is not None))
            # a hard outer deadline too: sock_read resets on every byte, so only a total deadline stops a drip
            async with asyncio.timeout(self.settings.fetch.timeout_s + 1.0):
                target = URL(url, encoded=True)
                for hop in range(max_redirects + 1):
                    async with self.session.get(
                        target, proxy=proxy.url if proxy else None, allow_redirects=False
                    ) as resp:
                        location = resp.headers.get("Location") if resp.status in _REDIRECTS else None
                        if location is None or max_redirects == 0:
                            yield resp, hop
                            return
                        here = resp.url
                    if hop == max_redirects:
                        break
                    target = await self._next_hop(here, location)
                raise TooManyRedirects(f"more than {max_redirects} redirects")

    async def fetch(self, url: str, proxy: ProxyChoice | None) -> FetchResult:
        """One attempt, redirects included."""
        started = time.monotonic()
        async with self._open(url, proxy, self.settings.fetch.max_redirects) as (resp, redirects):
            return await self._result(url, resp, proxy, started, redirects)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _next_hop(self, here: URL, location: str) -> URL:
        try:
            target = here.join(URL(location))
        except ValueError:
            raise InvalidTarget("redirect to an unparsable URL") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise InvalidTarget(f"redirect to a {target.scheme or 'relative'} URL")
        host = target.host.lower()
        if self.trust is not None and await self.trust.refuses(host):
            raise BlockedAddress(f"redirect to private address {host}")
        return target

    async def _result(
        self, url: str, resp: aiohttp.ClientResponse, proxy: ProxyChoice | None, started: float, redirects: int
    ) -> FetchResult:
        s = self.settings
        ctype = (resp.content_type or "").lower() if "Content-Type" in resp.headers else ""
        if proxy is not None and resp.status == 407:
            raise ProxyAuthError("gateway refused the credentials (407)")
        declared = resp.content_length
        body: bytes | None = None
        if resp.status in (204, 304) or resp.method == "HEAD":
            got = 0
        elif ctype in HTML_TYPES or ctype == "":
            if declared is not None and declared > s.fetch.max_body_bytes:
                raise BodyTooLarge(f"Content-Length {declared} > {s.fetch.max_body_bytes}")
            body = await self._read_capped(resp.content)
            got = len(body)
        elif declared is not None:
            got = declared  # not kept: do not pay the gateway for bytes nobody reads
        else:
            got = await self._count_capped(resp.content)
        return FetchResult(
            url=url,
            final_url=str(resp.url),
            status=resp.status,
            content_type=ctype,
            charset=resp.charset,
            content_encoding=resp.headers.get("Content-Encoding", ""),
            body=body,
            bytes=got,
            elapsed_ms=int((time.monotonic() - started) * 1000),
            retry_after=resp.headers.get("Retry-After"),
            redirects=redirects,
        )

    async def fetch_small(self, url: str, proxy: ProxyChoice | None, cap: int = MAX_ROBOTS_BYTES) -> tuple[int, bytes]:
        """(status, body decoded up to `cap` bytes) for robots.txt; a body past the cap is cut, never dropped.

        Raises FetchError (its cause kept) when there is no answer, ProxyAuthError on a gateway 407: the robots
        cache tells "unreachable, and why" from "the credentials are wrong" from a real answer.
        """
        async with self._open(url, proxy, ROBOTS_MAX_REDIRECTS) as (resp, _):
            if proxy is not None and resp.status == 407:
                raise ProxyAuthError("the gateway refused the credentials (407)")
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                buf += chunk
                if len(buf) >= cap:
                    break
            encoding = resp.headers.get("Content-Encoding", "")
            body = await asyncio.to_thread(decode_prefix, bytes(buf), encoding, cap) if encoding else bytes(buf[:cap])
            return resp.status, body

    async def _read_capped(self, content: aiohttp.StreamReader) -> bytes:
        cap = self.settings.fetch.max_body_bytes
        buf = bytearray()
        async for chunk in content.iter_chunked(CHUNK):
            buf += chunk
            if len(buf) > cap:
                raise BodyTooLarge(f"body passed {cap} bytes")
        return bytes(buf)

    async def _count_capped(self, content: aiohttp.StreamReader) -> int:
        cap = self.settings.fetch.max_body_bytes
        n = 0
        async for chunk in content.iter_chunked(CHUNK):
            n += len(chunk)
            if n > cap:
                raise BodyTooLarge(f"body passed {cap} bytes")
        return n
