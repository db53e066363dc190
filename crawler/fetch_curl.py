"""The curl fetcher: one fetch attempt with a browser's network identity (TLS ClientHello, HTTP/2 settings and
header order, from curl_cffi's impersonation profiles), under every guarantee of the aiohttp `Fetcher`.

Why curl: anti-bot edges block Python's TLS fingerprint and its HTTP/1.1-only profile before a request reaches
the site. What is kept, and how:
- bodies stream from curl's write callback (`crawler.curl_client.Transfer`) under the cap, and a stopped read
  aborts the transfer (the callback fails, or a stalled transfer is removed) instead of draining the body.
  (curl's MAXFILESIZE is not used: it would refuse a large non-HTML body that is only counted from its
  Content-Length, which aiohttp does not);
- curl does not decode (HTTP_CONTENT_DECODING off): raw bytes go to the parse pool, which decompresses with
  its output cap; only the codings the pool can undo are asked for;
- deadlines: connect (CONNECTTIMEOUT), read (no byte for read_timeout_s: LOW_SPEED), total (TIMEOUT, which a
  drip-feed cannot reset), and an outer asyncio deadline as for aiohttp;
- redirects are followed here, hop by hop; without a proxy, every name is resolved here (in a thread), refused
  when private and untrusted, and pinned for curl (RESOLVE), so curl connects only to a checked address;
- the gateway: the proxy URL carries Basic credentials (its `{session}` already filled), https goes through
  CONNECT, a 407 is ProxyAuthError; with the fleet-wide cap, each request holds a slot and its connection is
  not reused;
- every curl error is translated once, in `crawler.curl_client.translate_curl_errors`, keeping the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from curl_cffi import CurlHttpVersion, CurlOpt
from yarl import URL

from crawler.curl_client import (
    CurlPool,
    Transfer,
    check_profile,
    int_or_none,
    parse_content_type,
    sent_headers,
    stale_connection,
    translate_curl_errors,
)
from crawler.errors import (
    BlockedAddress,
    BodyTooLarge,
    ConnectError,
    InvalidTarget,
    ProxyAuthError,
    TooManyRedirects,
)
from crawler.fetch_base import (
    DECODABLE_ENCODINGS,
    HOP_BODY_MAX,
    HTML_TYPES,
    REDIRECTS,
    ROBOTS_MAX_REDIRECTS,
    FetchResult,
    Hop,
    RawHeaders,
    RedirectingFetcher,
    body_cap,
    check_header_limits,
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
from crawler.settings import DEFAULT_USER_AGENT, Settings
from crawler.ssrf import TrustCache, is_private_address, literal_ip


@dataclass(frozen=True, slots=True)
class _Head:
    """A response head as received, and the transfer its body streams from."""

    url: str
    status: int
    reason: str
    raw: RawHeaders
    http_version: str
    peer_ip: str | None
    request_headers: RawHeaders
    transfer: Transfer

    def get(self, name: str) -> str | None:
        """The last value of header `name` (case-insensitive), as a dict of the headers would keep."""
        lname = name.lower()
        for k, v in reversed(self.raw):
            if k.lower() == lname:
                return v
        return None


_DNS_TTL_S = 300.0  # as the aiohttp session's DNS cache
_DNS_SIZE = 10_000


class CurlFetcher(RedirectingFetcher[_Head]):
    """Fetches one URL per call with curl_cffi. Same contract as `crawler.fetch.Fetcher` (see FetcherLike).

    `impersonate`: a curl_cffi profile ("chrome", "firefox136", ...) or None for curl's own identity; default
    `settings.impersonate`. `verify`: True, False, or a CA bundle path (tests). `keep_body`: keep every body
    under the cap (WARC `--warc-content all`), not only HTML. `record_request_headers` (for a WARC writer):
    FetchResult and Hop carry the headers as sent, the profile's included, through curl's debug callback, which
    costs ~0.1 ms of CPU per page; without it they carry only the headers this fetcher added to the profile's.
    `keep_truncated` (`--warc`): a body past the cap is read up to it and handed on in BodyTooLarge.
    """

    def __init__(
        self,
        settings: Settings,
        trust: TrustCache | None = None,
        slots: GatewaySlots | None = None,
        *,
        impersonate: str | None = None,
        keep_body: bool = False,
        verify: bool | str = True,
        record_request_headers: bool = False,
        keep_truncated: bool = False,
    ) -> None:
        self.settings = settings
        self.trust = trust  # the SSRF guard, when on: every name is resolved and checked here
        self.slots = slots  # the fleet-wide gateway connection cap, when set
        self.keep_body = keep_body
        self.keep_truncated = keep_truncated
        # the request heads as curl sent them (profile headers included), through curl's debug callback
        self.record_request_headers = record_request_headers
        profile = impersonate if impersonate is not None else settings.fetch.impersonate
        self.impersonate = check_profile(profile) if profile else None
        self.base_headers = self._base_headers(settings)
        # host -> (addresses, expiry): our own DNS cache, since curl's cannot be asked before it connects
        self._dns: OrderedDict[tuple[str, int], tuple[tuple[str, ...], float]] = OrderedDict()
        self.requests = 0  # attempts started (for the repr)
        self.stale_retries = 0  # requests sent again on a new connection: the reused one had died
        capped = settings.proxy.max_connections is not None and bool(settings.proxy.urls)
        # set once per handle, when it is created (a request sets only URL, headers, gateway, pins, callbacks)
        options: dict[CurlOpt, Any] = {
            CurlOpt.HTTP_CONTENT_DECODING: 0,  # raw bytes: decompression is the parse pool's, with its cap
            CurlOpt.CONNECTTIMEOUT_MS: int(settings.fetch.connect_timeout_s * 1000),
            CurlOpt.TIMEOUT_MS: int(settings.fetch.timeout_s * 1000),
            CurlOpt.LOW_SPEED_LIMIT: 1,  # less than 1 byte/s for read_timeout_s: the read deadline
            CurlOpt.LOW_SPEED_TIME: max(1, round(settings.fetch.read_timeout_s)),
            CurlOpt.HTTP_VERSION: CurlHttpVersion.V2TLS,  # h2 by ALPN over TLS, never an h2c upgrade
            CurlOpt.SUPPRESS_CONNECT_HEADERS: 1,  # the gateway's CONNECT answer is not the site's head
            CurlOpt.PROXY_CREDENTIAL_NO_REUSE: 1,  # a new sticky session (username) gets a new connection
            CurlOpt.NOPROXY: "",  # no_proxy from the environment never bypasses the gateway
            CurlOpt.FORBID_REUSE: 1 if capped else 0,  # an idle keep-alive connection counts at the gateway
        }
        if verify is False:
            options[CurlOpt.SSL_VERIFYPEER] = 0
            options[CurlOpt.SSL_VERIFYHOST] = 0
        elif isinstance(verify, str):
            options[CurlOpt.CAINFO] = verify
            options[CurlOpt.PROXY_CAINFO] = verify
        self.pool = CurlPool(settings.concurrency, self.impersonate, options, record_request_headers)

    def _base_headers(self, settings: Settings) -> dict[str, str]:
        """What every request sends on top of the profile's own headers (which keep their order: curl replaces
        a profile header in place). The profile's User-Agent stays unless --user-agent was given."""
        own: dict[str, str] = {"Accept-Encoding": DECODABLE_ENCODINGS}
        if self.impersonate is None:
            own = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", **own}
        if self.impersonate is None or settings.fetch.user_agent != DEFAULT_USER_AGENT:
            own["User-Agent"] = settings.fetch.user_agent
        extra = crawl_headers(settings.fetch.headers, settings.fetch.cookies)
        return merged(own, extra)

    def __repr__(self) -> str:
        return (
            f"CurlFetcher(impersonate={self.impersonate}, max_body_bytes={self.settings.fetch.max_body_bytes}, "
            f"timeout_s={self.settings.fetch.timeout_s}, requests={self.requests}, stale_retries={self.stale_retries})"
        )

    async def aclose(self) -> None:
        await self.pool.close()

    close = aclose

    def _slot(self, proxy: ProxyChoice | None) -> contextlib.AbstractAsyncContextManager[None]:
        if proxy is not None and self.slots is not None:
            return self.slots.slot()
        return contextlib.nullcontext()

    async def _pins(self, url: str, proxy: ProxyChoice | None) -> list[str] | None:
        """Resolve the host here (SSRF guard on, no proxy) and pin it for curl; BlockedAddress when a private
        address answers for a host that is not trusted. With a proxy the gateway resolves: nothing to pin."""
        if self.trust is None or proxy is not None:
            return None
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host or literal_ip(host) is not None:
            return None  # literals are checked by TrustCache.refuses before the fetch and on every redirect
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise InvalidTarget("invalid URL: bad port") from exc
        addrs = await self._resolve(host, port)
        if any(is_private_address(a) for a in addrs) and not await self.trust.trusted(host):
            raise BlockedAddress(f"{host} resolves to a private address")
        joined = ",".join(f"[{a}]" if ":" in a else a for a in addrs)
        return [f"{host}:{port}:{joined}"]

    async def _resolve(self, host: str, port: int) -> tuple[str, ...]:
        key = (host, port)
        hit = self._dns.get(key)
        if hit is not None and hit[1] > time.monotonic():
            self._dns.move_to_end(key)
            return hit[0]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectError(f"cannot resolve {host}") from exc
        addrs = tuple(dict.fromkeys(str(i[4][0]) for i in infos))
        self._dns[key] = (addrs, time.monotonic() + _DNS_TTL_S)
        if len(self._dns) > _DNS_SIZE:
            self._dns.popitem(last=False)
        return addrs

    async def _get(self, url: str, proxy: ProxyChoice | None, sent: Mapping[str, str]) -> _Head:
        """One GET, streamed: its head once received (the body is read from `head.transfer`)."""
        pins = await self._pins(url, proxy)
        self.requests += 1
        # "Name;" sends an empty header (curl drops "Name:"); values are sent as UTF-8, as aiohttp does
        lines = [(f"{k}: {v}" if v else f"{k};").encode() for k, v in sent.items()]
        via = proxy.url if proxy is not None else None
        try:
            t = await self.pool.start(url, lines, via, pins)
        except Exception as exc:
            if not stale_connection(exc):
                raise
            # as aiohttp does for a dead keep-alive connection: once more on a new one, no attempt spent
            self.stale_retries += 1
            t = await self.pool.start(url, lines, via, pins, fresh=True)
        try:
            status, reason, raw = t.head()
            heads = sent_headers(t.sent) if t.sent else ()
            return _Head(url, status, reason, raw, t.http_version(), t.peer_ip(), heads or tuple(sent.items()), t)
        except BaseException:
            await self.pool.finish(t)
            raise

    @contextlib.asynccontextmanager
    async def _open(
        self,
        url: str,
        proxy: ProxyChoice | None,
        max_redirects: int,
        headers: Mapping[str, str] | None = None,
        hops: list[Hop] | None = None,
    ) -> AsyncIterator[tuple[_Head, int, datetime]]:
        """GET `url` under the fleet slot, the deadlines and the error translation, following redirects hop by
        hop through the SSRF guard. Yields (final response head, redirects followed, when its request was sent)."""
        sent = merged(self.base_headers, headers)
        async with self._slot(proxy), contextlib.AsyncExitStack() as stack:
            stack.enter_context(translate_curl_errors(proxy is not None))
            async with asyncio.timeout(self.settings.fetch.timeout_s + 1.0):
                target = URL(url, encoded=True)
                for hop in range(max_redirects + 1):
                    sent_at = datetime.now(UTC)
                    resp = await self._get(str(target), proxy, sent)
                    try:
                        check_header_limits(resp.raw)
                        location = resp.get("location") if resp.status in REDIRECTS else None
                        if location is None or max_redirects == 0:
                            yield resp, hop, sent_at
                            return
                        here = target
                        if hops is not None:
                            hops.append(await self._hop(resp, sent_at))
                    finally:
                        await self.pool.finish(resp.transfer)
                    if hop == max_redirects:
                        break
                    target = await next_hop(self.trust, here, location)
                raise TooManyRedirects(f"more than {max_redirects} redirects")

    async def _hop(self, resp: _Head, sent_at: datetime) -> Hop:
        buf = bytearray()
        async for chunk in resp.transfer.chunks():
            buf += chunk
            if len(buf) > HOP_BODY_MAX:
                break  # kept up to HOP_BODY_MAX; the transfer is ended by the caller
        return Hop(
            url=resp.url,
            status=resp.status,
            reason=resp.reason,
            http_version=resp.http_version,
            raw_headers=resp.raw,
            request_headers=resp.request_headers,
            body=bytes(memoryview(buf)[:HOP_BODY_MAX]),
            bytes=len(buf),
            sent_at=sent_at,
        )

    async def _result(
        self,
        url: str,
        resp: _Head,
        proxy: ProxyChoice | None,
        started: float,
        redirects: int,
        hops: tuple[Hop, ...],
        keep_body: bool = False,
        sent_at: datetime | None = None,
    ) -> FetchResult:
        cap = body_cap(self.settings.fetch.max_body_bytes, keep_body)
        if proxy is not None and resp.status == 407:
            raise ProxyAuthError("gateway refused the credentials (407)")
        ctype, charset = parse_content_type(resp.get("content-type"))
        declared = int_or_none(resp.get("content-length"))
        body: bytes | None = None
        over = False
        if resp.status in (204, 304):
            got = 0
        elif ctype in HTML_TYPES or ctype == "" or self.keep_body or keep_body:
            keep_cut = self._keeps_cut(declared, cap, keep_body)
            body, got, over = await self._read(resp, cap, keep=True, keep_cut=keep_cut)
        elif declared is not None:
            got = declared  # not kept: do not pay the gateway for bytes nobody reads (abort ends it)
        else:
            _, got, _ = await self._read(resp, cap, keep=False)
        result = FetchResult(
            url=url,
            final_url=resp.url,
            status=resp.status,
            content_type=ctype,
            charset=charset,
            content_encoding=resp.get("content-encoding") or "",
            body=body,
            bytes=got,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
            retry_after=resp.get("retry-after"),
            redirects=redirects,
            http_version=resp.http_version,
            peer_ip=resp.peer_ip,
            reason=resp.reason,
            raw_headers=resp.raw,
            request_headers=resp.request_headers,
            hops=hops,
            sent_at=sent_at,
        )
        return within_cap(result, over, cap, keep_body)

    async def _read(self, resp: _Head, cap: int, keep: bool, keep_cut: bool = False) -> tuple[bytes, int, bool]:
        """(body if `keep` else b"", bytes received, passed the cap). Past `cap`: BodyTooLarge, unless the body is
        kept and `keep_cut`: then the body cut at the cap, for `within_cap` (the transfer stops there)."""
        buf = bytearray()
        n = 0
        async for chunk in resp.transfer.chunks():
            n += len(chunk)
            if keep:
                buf += chunk
            if n > cap:
                if not (keep and keep_cut):
                    raise BodyTooLarge(f"body passed {cap} bytes")  # nothing to keep: no copy of it
                break
        body, over = cut(buf, cap)
        return body, n, over

    async def fetch_small(self, url: str, proxy: ProxyChoice | None, cap: int = MAX_ROBOTS_BYTES) -> tuple[int, bytes]:
        """(status, body decoded up to `cap` bytes) for robots.txt; a body past the cap is cut, never dropped.

        Raises FetchError (its cause kept) when there is no answer, ProxyAuthError on a gateway 407 (the same
        contract as the aiohttp fetcher's)."""
        async with self._open(url, proxy, ROBOTS_MAX_REDIRECTS) as (resp, _, _):
            if proxy is not None and resp.status == 407:
                raise ProxyAuthError("the gateway refused the credentials (407)")
            buf = bytearray()
            async for chunk in resp.transfer.chunks():
                buf += chunk
                if len(buf) >= cap:
                    break
            encoding = resp.get("content-encoding") or ""
            body = await asyncio.to_thread(decode_prefix, bytes(buf), encoding, cap) if encoding else bytes(buf[:cap])
            return resp.status, body
