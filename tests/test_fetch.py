"""The fetch layer's contract, proven for both fetchers (aiohttp and curl) against real servers on 127.0.0.1:
body caps, deadlines (a drip-feed stops at the total), raw bodies for the parse pool's capped decompression,
redirects hop by hop (with their Hop records), header floods, non-HTML counted or kept, per-request headers and
conditional requests (304), the proxy gateway (Basic auth, sticky session, CONNECT, 407), and the SSRF guard on
redirect targets and resolved names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from aiohttp import web

from crawler.errors import (
    BlockedAddress,
    BodyTooLarge,
    FetchError,
    FetchTimeout,
    InvalidResponse,
    ProxyAuthError,
    TooManyRedirects,
)
from crawler.fetch import Fetcher, make_fetcher, make_session
from crawler.fetch_base import SITEMAP_MAX_BYTES, FetcherLike
from crawler.fetch_curl import CurlFetcher
from crawler.gateway_slots import GatewaySlots
from crawler.parse import _TooLarge, decompress
from crawler.proxies import ProxyPool
from crawler.settings import Settings
from crawler.ssrf import TrustCache
from crawler.testing.hostile_server import PNG_BYTES
from crawler.testing.proxy_server import ProxyServer
from crawler.testing.services import RedisServer, RunningServer, start_server, wait_until
from tests.helpers import PROXY_PASSWORD, PROXY_USER

T = TypeVar("T")
CAP = 1024 * 1024
BASE_FLAGS: dict[str, Any] = {
    "max_body_bytes": CAP,
    "timeout": 3.0,
    "read_timeout": 2.0,
    "connect_timeout": 2.0,
    "concurrency": 8,
}
SETTINGS = Settings.from_flags(**BASE_FLAGS)


def settings_with(**flags: Any) -> Settings:
    """The test settings with more flags (as a user would give them)."""
    return Settings.from_flags(**{**BASE_FLAGS, **flags})


@pytest.fixture(scope="module")
def hostile() -> Iterator[RunningServer]:
    with start_server("crawler.testing.hostile_server", "--port", 0) as h:
        yield h


@pytest.fixture(params=["aiohttp", "curl"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def build(
    kind: str,
    settings: Settings = SETTINGS,
    trust: TrustCache | None = None,
    slots: GatewaySlots | None = None,
    **kw: Any,
) -> FetcherLike:
    if kind == "curl":
        return CurlFetcher(settings, trust, slots, **kw)
    return Fetcher(make_session(settings, trust), settings, slots, trust, **kw)


def run(kind: str, body: Callable[[FetcherLike], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        f = build(kind, **kw)
        try:
            return await body(f)
        finally:
            await f.aclose()

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------ caps
@pytest.mark.parametrize("path", ["/big/5", "/big-chunked/5", "/infinite", "/links/100000"])
def test_bodies_past_the_cap_are_refused_without_reading_them_all(kind: str, hostile: RunningServer, path: str) -> None:
    async def body(f: FetcherLike) -> float:
        t0 = time.monotonic()
        with pytest.raises(BodyTooLarge) as err:
            await f.fetch(hostile.url + path, None)
        assert err.value.partial is None  # nothing kept without --warc
        return time.monotonic() - t0

    assert run(kind, body) < 3.0  # /infinite would never end: the cap, not the deadline, stopped it


@pytest.mark.parametrize("path", ["/big/5", "/big-chunked/5", "/infinite"])
def test_with_keep_truncated_a_body_past_the_cap_comes_back_cut_at_it(
    kind: str, hostile: RunningServer, path: str
) -> None:
    """--warc: the response is read up to the cap, even when its Content-Length says it is bigger, and handed on
    inside BodyTooLarge (the WARC writes it with WARC-Truncated)."""

    async def body(f: FetcherLike) -> None:
        with pytest.raises(BodyTooLarge) as err:
            await f.fetch(hostile.url + path, None)
        cut = err.value.partial
        assert cut is not None and cut.truncated and cut.status == 200 and cut.body is not None
        assert len(cut.body) == CAP and cut.bytes > CAP
        full = await f.fetch(hostile.url + "/big-page/8", None)  # under the cap: whole, not truncated
        assert full.body is not None and not full.truncated and len(full.body) == full.bytes > 8000

    run(kind, body, keep_truncated=True)


@pytest.mark.parametrize("path", ["/big/51", "/infinite"])
def test_a_sitemap_may_be_50_mib_and_one_past_that_comes_back_cut_never_refused(
    kind: str, hostile: RunningServer, path: str
) -> None:
    """A sitemap file may be 50 MiB uncompressed (sitemaps.org), more than a page's cap (1 MiB here): it is read
    whole up to that, and past it returned cut (its entries before the cut are expanded) instead of refused."""

    async def body(f: FetcherLike) -> None:
        whole = await f.fetch(hostile.url + "/big/5", None, keep_body=True)
        assert whole.body is not None and len(whole.body) == whole.bytes == 5 * 1024 * 1024 and not whole.truncated
        cut = await f.fetch(hostile.url + path, None, keep_body=True)
        assert cut.truncated and cut.body is not None and len(cut.body) == SITEMAP_MAX_BYTES < cut.bytes
        with pytest.raises(BodyTooLarge):  # the same body as a page: past the page cap
            await f.fetch(hostile.url + "/big/5", None)

    run(kind, body)


def test_a_drip_fed_body_stops_at_the_total_deadline(kind: str, hostile: RunningServer) -> None:
    settings = settings_with(timeout=2.0, read_timeout=5.0)  # 1 byte/s resets any read deadline

    async def body(f: FetcherLike) -> float:
        t0 = time.monotonic()
        with pytest.raises(FetchTimeout):
            await f.fetch(f"{hostile.url}/drip/30", None)
        return time.monotonic() - t0

    elapsed = run(kind, body, settings=settings)
    assert 1.5 < elapsed < 4.0, elapsed


def test_a_hanging_server_is_a_timeout(kind: str, hostile: RunningServer) -> None:
    settings = settings_with(timeout=2.0, read_timeout=1.0)

    async def body(f: FetcherLike) -> None:
        with pytest.raises(FetchTimeout):
            await f.fetch(f"{hostile.url}/hang", None)

    run(kind, body, settings=settings)


@pytest.mark.parametrize("enc", ["gzip", "br"])
def test_a_compression_bomb_arrives_raw_and_its_decompression_is_capped(
    kind: str, hostile: RunningServer, enc: str
) -> None:
    async def body(f: FetcherLike) -> tuple[int, str, bytes | None]:
        r = await f.fetch(f"{hostile.url}/bomb/{enc}/50", None)
        return r.bytes, r.content_encoding, r.body

    got, encoding, raw = run(kind, body)
    assert encoding == enc and raw is not None and got == len(raw) < CAP  # raw bytes, not 50 MiB
    with pytest.raises(_TooLarge):
        decompress(raw, encoding, CAP)


# ------------------------------------------------------------------------------------------- redirects
def test_a_redirect_chain_is_followed_hop_by_hop_with_a_record_per_hop(kind: str, hostile: RunningServer) -> None:
    async def body(f: FetcherLike) -> Any:
        return await f.fetch(f"{hostile.url}/redirect/chain/3", None)

    r = run(kind, body)
    assert r.status == 200 and r.redirects == 3 and r.final_url == f"{hostile.url}/redirect/chain/0"
    assert [h.url for h in r.hops] == [f"{hostile.url}/redirect/chain/{n}" for n in (3, 2, 1)]
    assert all(h.status == 302 and h.http_version == "1.1" and h.reason == "Found" for h in r.hops)
    assert all(dict((k.lower(), v) for k, v in h.raw_headers)["location"].startswith("/redirect/") for h in r.hops)
    assert r.http_version == "1.1" and r.reason == "OK" and r.peer_ip == "127.0.0.1"
    assert b"chain end" in (r.body or b"")


def test_a_redirect_loop_ends_as_too_many_redirects(kind: str, hostile: RunningServer) -> None:
    async def body(f: FetcherLike) -> None:
        with pytest.raises(TooManyRedirects):
            await f.fetch(f"{hostile.url}/redirect/loop", None)

    run(kind, body)


@pytest.mark.parametrize("path", ["/headers/huge", "/headers/huge-one"])
def test_header_floods_are_invalid_responses(kind: str, hostile: RunningServer, path: str) -> None:
    async def body(f: FetcherLike) -> None:
        with pytest.raises(InvalidResponse):
            await f.fetch(hostile.url + path, None)

    run(kind, body)


def test_non_html_is_counted_not_kept_unless_asked(kind: str, hostile: RunningServer) -> None:
    async def body(f: FetcherLike) -> Any:
        return await f.fetch(f"{hostile.url}/image.png", None)

    counted = run(kind, body)
    assert (counted.status, counted.content_type, counted.bytes, counted.body) == (
        200,
        "image/png",
        len(PNG_BYTES),
        None,
    )
    kept = run(kind, body, keep_body=True)
    assert kept.body == PNG_BYTES and kept.bytes == len(PNG_BYTES)


def test_a_large_non_html_body_is_counted_from_its_content_length_unread(kind: str, echo: str) -> None:
    async def body(f: FetcherLike) -> tuple[Any, float]:
        t0 = time.monotonic()
        r = await f.fetch(f"{echo}/blob/200", None)  # 200 MiB declared, never sent in full
        return r, time.monotonic() - t0

    r, elapsed = run(kind, body)
    assert (r.status, r.content_type, r.body, r.bytes) == (200, "application/octet-stream", None, 200 * 1024 * 1024)
    assert elapsed < 2.0


# ------------------------------------------------------------------------- headers and conditional requests
@pytest.fixture
def echo() -> Iterator[str]:
    """An in-thread aiohttp app: /echo returns the request headers as received; /etag answers 304 to
    If-None-Match "v1"; /go?to=URL redirects there."""
    import threading

    ready: dict[str, Any] = {}
    started = threading.Event()

    async def echo_h(request: web.Request) -> web.Response:
        lines = "\n".join(f"{k}: {v}" for k, v in request.raw_headers_decoded())  # type: ignore[attr-defined]
        return web.Response(text=f"<title>echo</title><pre>{lines}</pre>", content_type="text/html")

    async def blob(request: web.Request) -> web.StreamResponse:
        total = int(request.match_info["mb"]) * 1024 * 1024
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = total
        await resp.prepare(request)
        chunk = b"\0" * 65536
        for _ in range(total // len(chunk)):
            await resp.write(chunk)
        return resp

    async def go(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def etag(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(text="<title>v1</title>", content_type="text/html", headers={"ETag": '"v1"'})

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/echo", echo_h)
        app.router.add_get("/etag", etag)
        app.router.add_get("/go", go)
        app.router.add_get(r"/blob/{mb:\d+}", blob)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ready["stop"] = asyncio.Event()
        ready["loop"] = asyncio.get_running_loop()
        started.set()
        await ready["stop"].wait()
        await runner.cleanup()

    t = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    t.start()
    assert started.wait(10)
    yield str(ready["url"])
    ready["loop"].call_soon_threadsafe(ready["stop"].set)
    t.join(10)


def _patch_raw_headers() -> None:
    def decoded(self: web.Request) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers]

    web.Request.raw_headers_decoded = decoded  # type: ignore[attr-defined]


_patch_raw_headers()


def test_crawl_wide_and_per_request_headers_are_sent_and_recorded(kind: str, echo: str) -> None:
    settings = settings_with(user_agent="my-agent/1", header=("X-Crawl: wide", "X-Follow: no"), cookie=("a=1",))

    async def body(f: FetcherLike) -> Any:
        return await f.fetch(f"{echo}/echo", None, {"X-Follow": "yes", "Cookie": "sid=abc"})

    r = run(kind, body, settings=settings)
    text = (r.body or b"").decode()
    assert "User-Agent: my-agent/1" in text or "user-agent: my-agent/1" in text.lower()
    assert "x-follow: yes" in text.lower() and "cookie: sid=abc" in text.lower()  # per request wins
    assert "x-crawl: wide" in text.lower() and "x-follow: no" not in text.lower()
    assert ("X-Follow", "yes") in r.request_headers and ("Cookie", "sid=abc") in r.request_headers
    assert "sid=abc" not in repr(r)


def test_a_conditional_request_comes_back_as_a_304_result(kind: str, echo: str) -> None:
    async def body(f: FetcherLike) -> tuple[Any, Any]:
        first = await f.fetch(f"{echo}/etag", None)
        again = await f.fetch(f"{echo}/etag", None, {"If-None-Match": '"v1"'})
        return first, again

    first, again = run(kind, body)
    assert first.status == 200 and first.body and b"v1" in first.body
    assert again.status == 304 and again.body is None and again.bytes == 0


# -------------------------------------------------------------------------------------------- the gateway
@pytest.fixture
def proxy() -> Iterator[ProxyServer]:
    server = ProxyServer(user=PROXY_USER, password=PROXY_PASSWORD)
    yield server


def _through(proxy: ProxyServer, kind: str, url: str, password: str) -> tuple[Any, dict[str, Any]]:
    async def main() -> tuple[Any, dict[str, Any]]:
        await proxy.start()
        template = proxy.url.replace("http://", f"http://{PROXY_USER}-session-{{session}}:{password}@")
        pool = ProxyPool((template,))
        f = build(kind)
        try:
            choice = pool.choose()
            try:
                result: Any = await f.fetch(url, choice)
            except ProxyAuthError as exc:
                result = exc
            return result, proxy.stats() | {"session": choice.session_id if choice else ""}
        finally:
            await f.aclose()
            await proxy.close()

    return asyncio.run(main())


def test_through_the_gateway_with_basic_auth_and_a_sticky_session(
    kind: str, hostile: RunningServer, proxy: ProxyServer
) -> None:
    r, stats = _through(proxy, kind, f"{hostile.url}/redirect/chain/1", PROXY_PASSWORD)
    assert r.status == 200 and r.redirects == 1 and b"chain end" in r.body
    assert stats["requests"] == 2 and stats["auth_failures"] == 0
    assert stats["sessions"] == [stats["session"]]  # the gateway saw the sticky session in the username


def test_wrong_gateway_credentials_are_proxy_auth_errors(kind: str, hostile: RunningServer, proxy: ProxyServer) -> None:
    r, stats = _through(proxy, kind, f"{hostile.url}/slow/1", "wrong-password")
    assert isinstance(r, ProxyAuthError) and stats["auth_failures"] >= 1


# ------------------------------------------------------------------------------------------ the SSRF guard
def test_redirects_and_names_to_private_addresses_are_refused_before_any_request(
    kind: str, hostile: RunningServer, echo: str
) -> None:
    """localhost is the hostile server's own address, but only 127.0.0.1 (the seed host) is trusted: the name
    must be refused on its resolved address, as the first URL and as a redirect target, without a request."""
    port = hostile.url.rsplit(":", 1)[1]
    to_localhost = f"{echo}/go?to=http://localhost:{port}/x/2"
    to_literal = f"{echo}/go?to=http://169.254.169.254/latest/meta-data"

    async def seed_only(host: str) -> bool:
        return host == "127.0.0.1"

    async def body(f: FetcherLike) -> tuple[list[str], int, int]:
        before = (await asyncio.to_thread(hostile.stats))["by_first_segment"].get("x", 0)
        outcomes = []
        for url in (f"http://localhost:{port}/x/1", to_localhost, to_literal):
            try:
                await f.fetch(url, None)
                outcomes.append("fetched")
            except BlockedAddress:
                outcomes.append("blocked")
        r = await f.fetch(f"{hostile.url}/x/3", None)  # the seed host itself is fetched
        after = (await asyncio.to_thread(hostile.stats))["by_first_segment"].get("x", 0)
        return outcomes, after - before, r.status

    outcomes, hits, status = run(kind, body, trust=TrustCache(seed_only))
    assert outcomes == ["blocked"] * 3 and status == 200 and hits == 1, (outcomes, hits)


def test_the_browser_profile_headers_keep_their_order_and_user_agent_overrides_in_place(echo: str) -> None:
    def names(settings: Settings) -> list[tuple[str, str]]:
        async def body(f: FetcherLike) -> bytes:
            return (await f.fetch(f"{echo}/echo", None)).body or b""

        text = run("curl", body, settings=settings, impersonate="chrome").decode()
        lines = text.split("<pre>", 1)[1].split("</pre>", 1)[0].splitlines()
        return [(k.lower(), v) for k, _, v in (ln.partition(": ") for ln in lines)]

    profile = names(SETTINGS)
    mine = names(settings_with(user_agent="my-agent/1"))
    assert profile[0][0] == "sec-ch-ua" and dict(profile)["user-agent"].startswith("Mozilla/5.0")
    assert [k for k, _ in profile] == [k for k, _ in mine]  # same order, one value changed in place
    assert dict(mine)["user-agent"] == "my-agent/1"
    assert dict(mine)["accept-encoding"] == "gzip, deflate, br"  # only what the parse pool can decode


# --------------------------------------------------------------------------------------------- the factory
def test_make_fetcher_chooses_by_settings_fetcher() -> None:
    async def main() -> list[str]:
        names = []
        for name in ("aiohttp", "curl"):
            f = make_fetcher(settings_with(fetcher=name))
            names.append(type(f).__name__)
            await f.aclose()
        return names

    assert asyncio.run(main()) == ["Fetcher", "CurlFetcher"]


def test_request_headers_are_recorded_as_the_server_received_them(kind: str, echo: str) -> None:
    """What a WARC request record needs: every header sent (the browser profile's too), in order."""
    kw = {"impersonate": "chrome", "record_request_headers": True} if kind == "curl" else {}

    async def body(f: FetcherLike) -> Any:
        return await f.fetch(f"{echo}/echo", None, {"If-None-Match": '"x"'})

    r = run(kind, body, **kw)
    text = (r.body or b"").decode()
    received = [tuple(ln.split(": ", 1)) for ln in text.split("<pre>", 1)[1].split("</pre>", 1)[0].splitlines()]
    recorded = [(k.lower(), v) for k, v in r.request_headers]
    assert [(k.lower(), v) for k, v in received] == recorded
    assert ("if-none-match", '"x"') in recorded and len(recorded) >= (10 if kind == "curl" else 4)


# ------------------------------------------------------------------------------------ the fleet-wide cap
def test_the_gateway_connection_cap_holds_for_concurrent_fetches(
    kind: str, hostile: RunningServer, redis_server: RedisServer, crawl_name: str
) -> None:
    """12 fetches at once under a cap of 3: the gateway itself never sees more than 3 client connections
    (so connections are closed, not kept alive past their slot), and every fetch succeeds."""
    settings = settings_with(proxy=("http://gw.invalid:1",), proxy_max_connections=3)

    async def main() -> tuple[list[int], dict[str, Any]]:
        import redis.asyncio as aioredis

        proxy = ProxyServer(user=PROXY_USER, password=PROXY_PASSWORD)
        await proxy.start()
        r = aioredis.from_url(redis_server.url)
        slots = GatewaySlots(r, crawl_name, 3, settings.fetch.timeout_s + 5)
        pool = ProxyPool((proxy.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@"),))
        f = build(kind, settings, slots=slots)
        try:
            results = await asyncio.gather(
                *(f.fetch(f"{hostile.url}/slow/150?n={i}", pool.choose()) for i in range(12))
            )
            return [x.status for x in results], proxy.stats()
        finally:
            await f.aclose()
            await proxy.close()
            await r.aclose()

    statuses, stats = asyncio.run(main())
    assert statuses == [200] * 12
    assert stats["requests"] == 12 and 1 <= stats["peak_client_connections"] <= 3, stats


# ------------------------------------------------------------------------------------- errors and cancellation
def test_refused_connections_are_connect_errors_and_a_dead_gateway_is_gateway_unreachable(
    kind: str, hostile: RunningServer
) -> None:
    """A dead gateway is GatewayUnreachable (an infrastructure fault for the circuit breaker), not the site's."""
    from crawler.errors import ConnectError, GatewayUnreachable
    from crawler.testing.services import free_port

    closed = free_port()

    async def body(f: FetcherLike) -> tuple[type[BaseException], type[BaseException], type[BaseException]]:
        got = []
        pool = ProxyPool((f"http://user:pw@127.0.0.1:{closed}",))
        for url, proxy in (
            (f"http://127.0.0.1:{closed}/", None),
            (f"{hostile.url}/slow/1", pool.choose()),
            (f"https://localhost:{closed}/", pool.choose()),
        ):
            try:
                await f.fetch(url, proxy)
            except FetchError as exc:
                assert exc.__cause__ is not None  # the client's own error is kept for the log
                got.append(type(exc))
        return got[0], got[1], got[2]

    assert run(kind, body) == (ConnectError, GatewayUnreachable, GatewayUnreachable)


def test_cancelled_fetches_give_their_connection_slots_back(kind: str, hostile: RunningServer) -> None:
    """Cancel twice as many hanging fetches as there are slots (SETTINGS.concurrency), then every slot must be
    free again: the next fetches do not wait for the hung ones' deadlines."""

    async def body(f: FetcherLike) -> tuple[list[int], float]:
        hung = [asyncio.ensure_future(f.fetch(f"{hostile.url}/hang", None)) for _ in range(2 * SETTINGS.concurrency)]
        # wait (with a deadline) until the slots are all held by hung requests, as the server sees them
        await asyncio.to_thread(wait_until, lambda: hostile.stats()["in_flight"] >= SETTINGS.concurrency, 10, 0.02)
        for t in hung:
            t.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        t0 = time.monotonic()
        results = await asyncio.gather(*(f.fetch(f"{hostile.url}/slow/1?n={i}", None) for i in range(16)))
        return [r.status for r in results], time.monotonic() - t0

    statuses, elapsed = run(kind, body)
    assert statuses == [200] * 16 and elapsed < 2.0, elapsed


def test_an_unknown_profile_or_fetcher_is_a_configuration_error() -> None:
    from crawler.errors import ConfigError

    with pytest.raises(ConfigError, match="--impersonate"):
        CurlFetcher(SETTINGS, impersonate="netscape4")
    with pytest.raises(ConfigError, match="--fetcher"):
        make_fetcher(settings_with(fetcher="wget"))
