"""The test servers are real: they speak HTTP on sockets and behave as documented.

These tests guard the fixtures every crawler end-to-end test relies on; if a server lied (say the
proxy buffered bodies or the site's expected crawl disagreed with its HTML) crawler tests would prove
nothing. Synchronous tests drive asyncio themselves (pytest-asyncio is not assumed).
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import ssl
import zlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
import pytest
import trustme

from crawler.testing.hostile_server import CP1251_TITLE, LATIN1_TITLE
from crawler.testing.proxy_server import ProxyServer
from crawler.testing.services import RunningServer, ServerStartError, start_server, wait_until
from crawler.testing.site_server import expected_pages

pytestmark = pytest.mark.timeout(30)

PROXY = "crawler.testing.proxy_server"
SITE = "crawler.testing.site_server"
HOSTILE = "crawler.testing.hostile_server"
PAGES, SEED = 60, 7
HREF_RE = re.compile(r'href="([^"]*)"')
TITLE_RE = re.compile(r"<title>(.*?)</title>", re.S)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def site() -> Iterator[RunningServer]:
    with start_server(SITE, "--port", 0, "--pages", PAGES, "--seed", SEED) as server:
        yield server


@pytest.fixture(scope="module")
def hostile() -> Iterator[RunningServer]:
    with start_server(HOSTILE, "--port", 0) as server:
        yield server


@pytest.fixture()
def proxy() -> Iterator[RunningServer]:
    with start_server(PROXY, "--port", 0, "--user", "U", "--password", "P") as server:
        yield server


def with_creds(proxy_url: str, user: str = "U", password: str = "P") -> str:
    return proxy_url.replace("http://", f"http://{user}:{password}@", 1)


def canon(url: str) -> str:
    """Independent re-implementation of the site's canonical form (no fragment, params sorted by key)."""
    parts = urlsplit(url)
    query = "&".join(sorted(parts.query.split("&"), key=lambda kv: kv.split("=", 1)[0])) if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


async def fetch(
    url: str, *, proxy: str | None = None, ssl_ctx: ssl.SSLContext | None = None
) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, proxy=proxy, ssl=ssl_ctx if ssl_ctx is not None else True) as resp,
    ):
        return resp.status, await resp.read(), dict(resp.headers)


# -- proxy ----------------------------------------------------------------------------------------


def test_proxy_rejects_missing_credentials(proxy: RunningServer, site: RunningServer) -> None:
    status, _, headers = asyncio.run(fetch(f"{site.url}/p/0", proxy=proxy.url))
    assert status == 407
    assert headers["Proxy-Authenticate"] == 'Basic realm="test"'
    status, _, _ = asyncio.run(fetch(f"{site.url}/p/0", proxy=with_creds(proxy.url, password="wrong")))
    assert status == 407
    stats = proxy.stats()
    assert stats["auth_failures"] == 2 and stats["requests"] == 2


def test_proxy_forwards_with_keep_alive(proxy: RunningServer, site: RunningServer) -> None:
    async def run() -> list[tuple[int, str]]:
        out = []
        async with aiohttp.ClientSession() as session:
            for i in range(20):
                async with session.get(f"{site.url}/p/{i}", proxy=with_creds(proxy.url)) as resp:
                    match = TITLE_RE.search(await resp.text())
                    out.append((resp.status, match.group(1) if match else ""))
        return out

    assert asyncio.run(run()) == [(200, f"Page {i}") for i in range(20)]
    stats = proxy.stats()
    assert stats["requests"] == 20
    assert stats["auth_failures"] == 0
    # One client connection carried all 20 requests, over one reused upstream connection.
    assert stats["peak_client_connections"] == 1
    assert stats["peak_upstream_connections"] == 1


def test_proxy_records_sticky_sessions(proxy: RunningServer, site: RunningServer) -> None:
    for session_id in ("abc", "zz-9"):
        status, _, _ = asyncio.run(fetch(f"{site.url}/p/1", proxy=with_creds(proxy.url, f"U-session-{session_id}")))
        assert status == 200
    status, _, _ = asyncio.run(fetch(f"{site.url}/p/1", proxy=with_creds(proxy.url, "V-session-abc")))
    assert status == 407
    assert proxy.stats()["sessions"] == ["abc", "zz-9"]


def test_proxy_streams_bodies_exactly(proxy: RunningServer, hostile: RunningServer) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            for path in ("/big/8", "/big-chunked/8", "/drip/1"):
                async with session.get(hostile.url + path) as direct:
                    want = hashlib.sha256(await direct.read()).hexdigest()
                async with session.get(hostile.url + path, proxy=with_creds(proxy.url)) as via:
                    assert via.status == 200
                    assert ("Content-Length" in via.headers) == (path == "/big/8")
                    assert hashlib.sha256(await via.read()).hexdigest() == want
            # A reset mid-body upstream must surface as a broken response, not a truncated success.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{hostile.url}/flaky/reset/proxy", proxy=with_creds(proxy.url)) as r:
                    await r.read()
            async with session.get(f"{hostile.url}/flaky/reset/proxy", proxy=with_creds(proxy.url)) as r:
                assert r.status == 200
            # Header floods are relayed too (the proxy's head limit is 1 MiB).
        async with aiohttp.ClientSession(max_headers=1000, max_field_size=200_000) as session:
            for path, name, size in (
                ("/headers/huge", "X-Huge-199", 1024),
                ("/headers/huge-one", "X-Huge", 102400),
            ):
                async with session.get(hostile.url + path, proxy=with_creds(proxy.url)) as r:
                    assert r.status == 200 and r.headers[name] == "h" * size

    asyncio.run(run())


def test_proxy_connect_tunnel_to_https_site(proxy: RunningServer, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_path)
    cert.private_key_pem.write_to_path(key_path)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    args = ("--port", 0, "--pages", 10, "--seed", 1, "--tls-cert", cert_path, "--tls-key", key_path)
    with start_server(SITE, *args, ssl_context=client_ctx) as tls_site:
        assert tls_site.url.startswith("https://127.0.0.1:")
        status, body, _ = asyncio.run(fetch(f"{tls_site.url}/p/0", proxy=with_creds(proxy.url), ssl_ctx=client_ctx))
        assert status == 200 and b"<title>Page 0</title>" in body
        assert f'href="{tls_site.url}/p/'.encode() in body or b'href="/p/' in body
        with pytest.raises(aiohttp.ClientHttpProxyError) as info:
            asyncio.run(fetch(f"{tls_site.url}/p/0", proxy=proxy.url, ssl_ctx=client_ctx))
        assert info.value.status == 407
        assert tls_site.stats()["by_path_prefix"]["/p"] == 1
    stats = proxy.stats()
    assert stats["connects"] == 2 and stats["auth_failures"] == 1 and stats["requests"] == 0


def test_proxy_fault_injection_is_counted(site: RunningServer) -> None:
    args = (
        "--port",
        0,
        "--user",
        "U",
        "--password",
        "P",
        "--drop-rate",
        0.3,
        "--fail-rate",
        0.3,
        "--seed",
        3,
    )
    with start_server(PROXY, *args) as faulty:

        async def run() -> tuple[int, int, int]:
            ok = failed = dropped = 0
            async with aiohttp.ClientSession() as session:
                for i in range(40):
                    try:
                        async with session.get(f"{site.url}/p/{i}", proxy=with_creds(faulty.url)) as resp:
                            await resp.read()
                            ok += resp.status == 200
                            failed += resp.status == 502
                    except aiohttp.ClientError:
                        dropped += 1
            return ok, failed, dropped

        ok, failed, dropped = asyncio.run(run())
        stats = faulty.stats()
    assert ok + failed + dropped == 40
    assert ok > 0 and failed > 0 and dropped > 0
    # aiohttp transparently retries an idempotent request once after a disconnect, so the proxy can see
    # more drops than the client reports; every request the proxy saw was forwarded, failed or dropped.
    assert stats["failed"] == failed and stats["dropped"] >= dropped
    assert stats["requests"] == ok + failed + stats["dropped"]


def test_proxy_peak_connections_reflect_client_limit(proxy: RunningServer, hostile: RunningServer) -> None:
    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=3)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(k: int) -> int:
                async with session.get(f"{hostile.url}/slow/200?k={k}", proxy=with_creds(proxy.url)) as resp:
                    await resp.read()
                    return resp.status

            assert await asyncio.gather(*(one(k) for k in range(9))) == [200] * 9

    asyncio.run(run())
    stats = proxy.stats()
    assert stats["peak_client_connections"] == 3
    assert stats["peak_upstream_connections"] == 3
    # Once the client pool is closed the proxy notices and releases everything.
    wait_until(lambda: proxy.stats()["active_tunnels_and_upstreams"] == 0, timeout_s=5)
    wait_until(lambda: proxy.stats()["active_client_connections"] == 1, timeout_s=5)  # the stats request


def test_proxy_in_process(hostile: RunningServer) -> None:
    async def run() -> None:
        server = ProxyServer(user="U", password="P")
        url = await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{hostile.url}/links/3", proxy=with_creds(url)) as resp:
                    assert resp.status == 200
                    assert "/x/2" in await resp.text()
                async with session.get(f"{url}/__stats") as resp:
                    assert (await resp.json())["requests"] == 1
        finally:
            await server.close()

    asyncio.run(run())


# -- site -----------------------------------------------------------------------------------------


async def live_bfs(base: str, disallow: tuple[str, ...] = ()) -> dict[str, tuple[str | None, int, int]]:
    """A deliberately naive crawler: regex hrefs, urljoin, same-origin, robots prefixes."""
    start = canon(f"{base}/p/0")
    found: dict[str, tuple[str | None, int, int]] = {}
    seen, queue = {start}, deque([(start, 0)])
    async with aiohttp.ClientSession() as session:
        while queue:
            url, depth = queue.popleft()
            async with session.get(url, allow_redirects=False) as resp:
                text = await resp.text()
                match = TITLE_RE.search(text)
                found[url] = (match.group(1) if match else None, resp.status, depth)
            for href in HREF_RE.findall(text):
                link = canon(urljoin(url, html.unescape(href)))
                if not link.startswith(base + "/") or link in seen:
                    continue
                if any(urlsplit(link).path.startswith(prefix) for prefix in disallow):
                    continue
                seen.add(link)
                queue.append((link, depth + 1))
    return found


def test_expected_pages_matches_live_crawl(site: RunningServer) -> None:
    expected = expected_pages(PAGES, SEED, site.url)
    assert asyncio.run(live_bfs(site.url)) == expected
    pages = {u for u in expected if "/p/" in u}
    assert 1 < len(pages) < PAGES, "some pages must be unreachable (orphans)"
    assert any("/q/" in u for u in expected) and any(v[1] == 404 for v in expected.values())
    assert all(u == canon(u) and "#" not in u for u in expected)


def test_site_robots_and_private_pages() -> None:
    with start_server(SITE, "--port", 0, "--pages", 40, "--seed", 2, "--disallow", "/private") as site:
        status, body, _ = asyncio.run(fetch(f"{site.url}/robots.txt"))
        assert status == 200 and body == b"User-agent: *\nDisallow: /private\n"
        expected = expected_pages(40, 2, site.url, ["/private"])
        assert asyncio.run(live_bfs(site.url, ("/private",))) == expected
        assert not any("/private/" in u for u in expected)
        assert site.stats()["by_path_prefix"]["/private"] == 0
        status, body, _ = asyncio.run(fetch(f"{site.url}/private/3"))
        assert status == 200 and b"<title>Private 3</title>" in body
        stats = site.stats()
        assert stats["by_path_prefix"]["/private"] == 1 and stats["by_path_prefix"]["/robots.txt"] == 1
        # Without the robots filter the same site does link to /private/ pages.
        unfiltered = expected_pages(40, 2, site.url, ["/nothing-disallowed"])
        assert any("/private/" in u for u in unfiltered)


def test_site_without_disallow_has_no_robots(site: RunningServer) -> None:
    status, _, _ = asyncio.run(fetch(f"{site.url}/robots.txt"))
    assert status == 404
    status, body, _ = asyncio.run(fetch(f"{site.url}/q/4?b=2&a=1"))
    assert status == 200 and b"<title>Query 4</title>" in body
    status, body, _ = asyncio.run(fetch(f"{site.url}/missing/4"))
    assert status == 404 and b"<title>" not in body


def test_site_prefork_workers_share_the_port() -> None:
    with start_server(SITE, "--port", 0, "--pages", 50, "--seed", 1, "--processes", 2) as site:

        async def pids() -> set[int]:
            seen: set[int] = set()
            # A fresh connection per request lets the kernel hand each accept to either worker.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(20):
                    results = await asyncio.gather(
                        *(session.get(f"{site.url}/__stats") for _ in range(10)), return_exceptions=False
                    )
                    for resp in results:
                        seen.add((await resp.json())["pid"])
                        resp.release()
                    if len(seen) == 2:
                        break
            return seen

        assert len(asyncio.run(pids())) == 2
        status, body, _ = asyncio.run(fetch(f"{site.url}/p/3"))
        assert status == 200 and b"<title>Page 3</title>" in body
        assert site.stop() == 0


# -- hostile --------------------------------------------------------------------------------------


def test_hostile_flaky_503(hostile: RunningServer) -> None:
    statuses = [asyncio.run(fetch(f"{hostile.url}/flaky/503/2/t"))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_hostile_gzip_bomb_is_small_on_the_wire(hostile: RunningServer) -> None:
    async def raw() -> tuple[bytes, dict[str, str]]:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(f"{hostile.url}/bomb/gzip/50") as resp,
        ):
            return await resp.read(), dict(resp.headers)

    body, headers = asyncio.run(raw())
    assert headers["Content-Encoding"] == "gzip" and headers["Content-Type"].startswith("text/html")
    assert len(body) < MIB
    decompressor = zlib.decompressobj(31)
    total = 0
    chunk = decompressor.decompress(body, MIB)
    while chunk:
        total += len(chunk)
        chunk = decompressor.decompress(decompressor.unconsumed_tail, MIB)
    assert total == 50 * MIB


def test_hostile_misc_endpoints(hostile: RunningServer) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{hostile.url}/flaky/429/7/misc") as resp:
                assert resp.status == 429 and resp.headers["Retry-After"] == "7"
            async with session.get(f"{hostile.url}/flaky/429/7/misc") as resp:
                assert resp.status == 200
            async with session.get(f"{hostile.url}/redirect/chain/3") as resp:
                assert resp.status == 200 and len(resp.history) == 3
            with pytest.raises(aiohttp.TooManyRedirects):
                async with session.get(f"{hostile.url}/redirect/loop", max_redirects=5):
                    pass
            async with session.get(f"{hostile.url}/charset/latin1") as resp:
                assert LATIN1_TITLE in await resp.text()
            async with session.get(f"{hostile.url}/charset/lying") as resp:
                with pytest.raises(UnicodeDecodeError):
                    (await resp.read()).decode(resp.charset or "utf-8")
            async with session.get(f"{hostile.url}/charset/meta") as resp:
                assert resp.charset is None and CP1251_TITLE in (await resp.read()).decode("cp1251")
            async with session.get(f"{hostile.url}/image.png") as resp:
                assert resp.content_type == "image/png" and (await resp.read()).startswith(b"\x89PNG")
            async with session.get(f"{hostile.url}/big-page/100") as resp:
                assert len(await resp.read()) == 100 * 1024
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"{hostile.url}/flaky/reset/direct") as resp:
                    await resp.read()
            with pytest.raises(asyncio.TimeoutError):
                async with session.get(f"{hostile.url}/hang", timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass

    asyncio.run(run())
    # The abandoned /hang handler is cancelled, so nothing stays in flight.
    wait_until(lambda: hostile.stats()["in_flight"] == 0, timeout_s=5)
    assert hostile.stats()["by_first_segment"]["flaky"] >= 4


def test_start_server_reports_early_exit() -> None:
    with pytest.raises(ServerStartError, match="--pages"):
        start_server(SITE, "--port", 0)  # argparse exits: --pages is required
