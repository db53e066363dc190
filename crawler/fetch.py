"""One fetch attempt through the gateway: stream the body in chunks under a size cap, translate errors once.

One `aiohttp.ClientSession` per worker process. Bodies arrive raw (`auto_decompress=False`) and are decompressed
in the parse pool with an output cap, which keeps decompression off the event loop and makes a compression bomb
cost at most the cap. Non-HTML bodies are counted, not kept: the record says status, type and size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from yarl import URL

from crawler.errors import (
    BlockedAddress,
    BodyTooLarge,
    ConfigError,
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
from crawler.fetch_base import (
    CHUNK,
    DECODABLE_ENCODINGS,
    HOP_BODY_MAX,
    HTML_TYPES,
    REDIRECTS,
    ROBOTS_MAX_REDIRECTS,
    FetcherLike,
    FetchResult,
    Hop,
    RawHeaders,
    RedirectingFetcher,
    body_cap,
    crawl_headers,
    cut,
    decode_prefix,
    merged,
    next_hop,
    within_cap,
)
from crawler.gateway_slots import GatewaySlots
from crawler.proxies import ProxyChoice
from crawler.robots import MAX_ROBOTS_BYTES
from crawler.settings import Settings
from crawler.ssrf import BlockedAddressOSError, GuardedResolver, TrustCache


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
            "Accept-Encoding": DECODABLE_ENCODINGS,
        },
        cookie_jar=aiohttp.DummyCookieJar(),  # a crawler has no cookie state; a jar per site grows without bound
        trust_env=False,
        max_line_size=16 * 1024,
        max_field_size=16 * 1024,
    )


def os_reason(err: OSError) -> str:
    """What went wrong, in words ("Connection refused"), from the errno when the message does not say it."""
    if err.errno:
        return os.strerror(err.errno)
    return err.strerror or str(err) or type(err).__name__


@contextlib.contextmanager
def translate_errors(via_proxy: bool) -> Iterator[None]:
    """The one place aiohttp's exceptions become ours."""
    try:
        yield
    except FetchError:
        raise
    except aiohttp.TooManyRedirects as exc:
        raise TooManyRedirects("too many redirects") from exc
    except aiohttp.ClientHttpProxyError as exc:
        if exc.status == 407:
            raise ProxyAuthError("gateway refused the credentials (407)") from exc
        raise ProxyError(f"gateway answered {exc.status} to CONNECT") from exc
    except aiohttp.ClientProxyConnectionError as exc:
        raise GatewayUnreachable(f"cannot connect to the gateway: {os_reason(exc.os_error)}") from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, BlockedAddressOSError):
            raise BlockedAddress(str(exc.os_error)) from exc
        raise ConnectError(f"cannot connect to {exc.host}:{exc.port}: {os_reason(exc.os_error)}") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise FetchTimeout("deadline passed") from exc
    except aiohttp.ClientResponseError as exc:  # bad status line, headers too large, ...
        raise InvalidResponse(f"invalid response: {exc.message[:100]}") from exc
    except aiohttp.InvalidURL as exc:
        raise InvalidTarget(f"invalid URL: {str(exc)[:100]}") from exc
    except (aiohttp.ClientError, ConnectionError) as exc:  # payload cut, server disconnected, resets, ...
        raise ConnectError(exc.__class__.__name__) from exc


def _wire_reason(reason: str | None) -> str:
    """The reason phrase as the headers are kept: one character per byte received (latin-1). aiohttp decodes it
    as UTF-8, so `Très bien` would otherwise be two bytes short of what the server sent (the curl fetcher reads
    its status line as latin-1 already)."""
    return (reason or "").encode("utf-8", "surrogateescape").decode("latin-1")


def _decoded(raw: Any) -> RawHeaders:
    """aiohttp's raw (bytes) header pairs as text; latin-1 keeps every byte as received."""
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)


def _version(resp: aiohttp.ClientResponse) -> str:
    v = resp.version
    return "1.1" if v is None else ("2" if v.major == 2 else f"{v.major}.{v.minor}")


def _peer_ip(resp: aiohttp.ClientResponse) -> str | None:
    """The address connected to. A small body may be read whole with the headers, and the connection released
    at once, so its protocol's transport is asked (aiohttp keeps it on the response)."""
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is None:
        protocol = getattr(resp, "_protocol", None)
        transport = getattr(protocol, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else None


class Fetcher(RedirectingFetcher[aiohttp.ClientResponse]):
    """Fetches one URL per call with aiohttp. Holds no per-URL state, so memory does not grow with the crawl.

    `keep_body` keeps every body under the cap (WARC `--warc-content all`), not only HTML. `keep_truncated`
    (`--warc`): a body past the cap is read up to it and handed on in BodyTooLarge for the archive.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        slots: GatewaySlots | None = None,
        trust: TrustCache | None = None,
        keep_body: bool = False,
        keep_truncated: bool = False,
    ) -> None:
        self.session = session
        self.settings = settings
        self.slots = slots  # the fleet-wide gateway connection cap, when set
        self.trust = trust  # the SSRF guard, when on: checks every redirect target
        self.keep_body = keep_body
        self.keep_truncated = keep_truncated
        # --header / --cookie, sent with every request (built once; per-request headers override them)
        self.extra_headers = crawl_headers(settings.fetch.headers, settings.fetch.cookies)

    def _slot(self, proxy: ProxyChoice | None) -> contextlib.AbstractAsyncContextManager[None]:
        if proxy is not None and self.slots is not None:
            return self.slots.slot()
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return (
            f"Fetcher(max_body_bytes={self.settings.fetch.max_body_bytes}, timeout_s={self.settings.fetch.timeout_s})"
        )

    async def aclose(self) -> None:
        await self.session.close()

    close = aclose

    @contextlib.asynccontextmanager
    async def _open(
        self,
        url: str,
        proxy: ProxyChoice | None,
        max_redirects: int,
        headers: Mapping[str, str] | None = None,
        hops: list[Hop] | None = None,
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, int, datetime]]:
        """GET `url` under the fleet slot, the total deadline and the error translation, following redirects here,
        hop by hop, so every target passes the SSRF guard. Yields (final response, redirects followed, when its
        request was sent); each redirect response is appended to `hops` when given."""
        sent = merged(self.extra_headers, headers) or None
        async with self._slot(proxy), contextlib.AsyncExitStack() as stack:
            stack.enter_context(translate_errors(proxy is not None))
            # a hard outer deadline too: sock_read resets on every byte, so only a total deadline stops a drip
            async with asyncio.timeout(self.settings.fetch.timeout_s + 1.0):
                target = URL(url, encoded=True)
                for hop in range(max_redirects + 1):
                    sent_at = datetime.now(UTC)
                    async with self.session.get(
                        target, proxy=proxy.url if proxy else None, allow_redirects=False, headers=sent
                    ) as resp:
                        location = resp.headers.get("Location") if resp.status in REDIRECTS else None
                        if location is None or max_redirects == 0:
                            yield resp, hop, sent_at
                            return
                        here = resp.url
                        if hops is not None:
                            hops.append(await self._hop(resp, sent_at))
                    if hop == max_redirects:
                        break
                    target = await next_hop(self.trust, here, location)
                raise TooManyRedirects(f"more than {max_redirects} redirects")

    async def _hop(self, resp: aiohttp.ClientResponse, sent_at: datetime) -> Hop:
        buf = bytearray()
        async for chunk in resp.content.iter_chunked(CHUNK):
            buf += chunk
            if len(buf) > HOP_BODY_MAX:
                break  # kept up to HOP_BODY_MAX: the connection is closed rather than drained
        return Hop(
            url=str(resp.url),
            status=resp.status,
            reason=_wire_reason(resp.reason),
            http_version=_version(resp),
            raw_headers=_decoded(resp.raw_headers),
            request_headers=tuple(resp.request_info.headers.items()),
            body=bytes(memoryview(buf)[:HOP_BODY_MAX]),
            bytes=len(buf),
            sent_at=sent_at,
        )

    async def _result(
        self,
        url: str,
        resp: aiohttp.ClientResponse,
        proxy: ProxyChoice | None,
        started: float,
        redirects: int,
        hops: tuple[Hop, ...],
        keep_body: bool = False,
        sent_at: datetime | None = None,
    ) -> FetchResult:
        s = self.settings
        ctype = (resp.content_type or "").lower() if "Content-Type" in resp.headers else ""
        if proxy is not None and resp.status == 407:
            raise ProxyAuthError("gateway refused the credentials (407)")
        declared = resp.content_length
        body: bytes | None = None
        over = False
        cap = body_cap(s.fetch.max_body_bytes, keep_body)
        peer = _peer_ip(resp)  # before the body: the connection is released at its end
        if resp.status in (204, 304) or resp.method == "HEAD":
            got = 0
        elif ctype in HTML_TYPES or ctype == "" or self.keep_body or keep_body:
            keep_cut = self._keeps_cut(declared, cap, keep_body)
            body, got, over = await self._read_capped(resp.content, cap, keep_cut)
        elif declared is not None:
            got = declared  # not kept: do not pay the gateway for bytes nobody reads
        else:
            got = await self._count_capped(resp.content)
        result = FetchResult(
            url=url,
            final_url=str(resp.url),
            status=resp.status,
            content_type=ctype,
            charset=resp.charset,
            content_encoding=resp.headers.get("Content-Encoding", ""),
            body=body,
            bytes=got,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
            retry_after=resp.headers.get("Retry-After"),
            redirects=redirects,
            http_version=_version(resp),
            peer_ip=peer,
            reason=_wire_reason(resp.reason),
            raw_headers=_decoded(resp.raw_headers),
            request_headers=tuple(resp.request_info.headers.items()),
            hops=hops,
            sent_at=sent_at,
        )
        return within_cap(result, over, cap, keep_body)

    async def fetch_small(self, url: str, proxy: ProxyChoice | None, cap: int = MAX_ROBOTS_BYTES) -> tuple[int, bytes]:
        """(status, body decoded up to `cap` bytes) for robots.txt; a body past the cap is cut, never dropped.

        Raises FetchError (its cause kept) when there is no answer, ProxyAuthError on a gateway 407: the robots
        cache tells "unreachable, and why" from "the credentials are wrong" from a real answer.
        """
        async with self._open(url, proxy, ROBOTS_MAX_REDIRECTS) as (resp, _, _):
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

    async def _read_capped(self, content: aiohttp.StreamReader, cap: int, keep_cut: bool) -> tuple[bytes, int, bool]:
        """(body, bytes received, passed the cap). Past the cap: BodyTooLarge, or with `keep_cut` the body cut at
        it (for `within_cap`); the rest is not read (the connection is closed rather than drained)."""
        buf = bytearray()
        async for chunk in content.iter_chunked(CHUNK):
            buf += chunk
            if len(buf) > cap:
                if not keep_cut:
                    raise BodyTooLarge(f"body passed {cap} bytes")  # nothing to keep: no copy of it
                break
        body, over = cut(buf, cap)
        return body, len(buf), over

    async def _count_capped(self, content: aiohttp.StreamReader) -> int:
        cap = self.settings.fetch.max_body_bytes
        n = 0
        async for chunk in content.iter_chunked(CHUNK):
            n += len(chunk)
            if n > cap:
                raise BodyTooLarge(f"body passed {cap} bytes")
        return n


def make_fetcher(
    settings: Settings,
    trust: TrustCache | None = None,
    slots: GatewaySlots | None = None,
    keep_body: bool = False,
    record_request_headers: bool = False,
    keep_truncated: bool = False,
) -> FetcherLike:
    """The fetcher `settings.fetcher` names ("aiohttp", the default, or "curl"), with its own session.

    `keep_body`: keep every body under the cap, not only HTML (WARC `--warc-content all`).
    `record_request_headers`: FetchResult.request_headers are complete, the browser profile's included (a WARC
    writer wants this; aiohttp always has them, curl pays a debug callback per page for them).
    `keep_truncated`: a body past the cap comes back cut at it inside BodyTooLarge (the WARC's truncated record).
    The caller owns the fetcher: `await fetcher.aclose()` at the end (or `contextlib.aclosing(...)`)."""
    kind = settings.fetch.fetcher
    if kind == "curl":
        from crawler.fetch_curl import CurlFetcher

        return CurlFetcher(
            settings,
            trust,
            slots,
            keep_body=keep_body,
            record_request_headers=record_request_headers,
            keep_truncated=keep_truncated,
        )
    if kind != "aiohttp":
        raise ConfigError(f"--fetcher {kind!r}: expected aiohttp or curl")
    return Fetcher(
        make_session(settings, trust), settings, slots, trust, keep_body=keep_body, keep_truncated=keep_truncated
    )


__all__ = [
    "CHUNK",
    "HTML_TYPES",
    "ROBOTS_MAX_REDIRECTS",
    "FetchResult",
    "Fetcher",
    "Hop",
    "make_fetcher",
    "make_session",
]
