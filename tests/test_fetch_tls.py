"""Network identity: what a TLS server and an HTTP/2 server see of each fetcher.

`crawler.testing.tls_hello.HelloServer` reads each ClientHello and computes JA3 and JA4. Impersonating Chrome,
the curl fetcher's hello carries GREASE and ALPN h2,http/1.1 and its fingerprints differ from aiohttp's, directly
and through the gateway's CONNECT tunnel. A hypercorn server (HTTP/2 by ALPN) sees HTTP/2 requests from it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from crawler.errors import ConnectError, ProxyAuthError
from crawler.fetch import Fetcher, make_session
from crawler.fetch_curl import CurlFetcher
from crawler.proxies import ProxyPool
from crawler.settings import Settings
from crawler.testing.proxy_server import ProxyServer
from crawler.testing.tls_hello import ClientHello, HelloServer, handshake_message, is_grease, parse_client_hello
from tests.helpers import PROXY_PASSWORD, PROXY_USER

SETTINGS = Settings.from_flags(timeout=5.0, read_timeout=5.0, connect_timeout=3.0, concurrency=4)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(CA bundle, server cert chain, server key) for localhost and 127.0.0.1."""
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca_path, chain, key = d / "ca.pem", d / "chain.pem", d / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(ca_path), str(chain), str(key)


@pytest.fixture
def hello_server(certs: tuple[str, str, str]) -> Iterator[HelloServer]:
    _, chain, key = certs
    with HelloServer(chain, key) as server:
        yield server


def _fetch_curl(url: str, ca: str, impersonate: str | None, proxy: ProxyServer | None = None) -> Any:
    async def main() -> Any:
        f = CurlFetcher(SETTINGS, impersonate=impersonate, verify=ca, record_request_headers=True)
        choice = None
        if proxy is not None:
            await proxy.start()
            pool = ProxyPool((proxy.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@"),))
            choice = pool.choose()
        try:
            return await f.fetch(url, choice)
        finally:
            await f.aclose()
            if proxy is not None:
                await proxy.close()

    return asyncio.run(main())


def _aiohttp_hello(server: HelloServer) -> ClientHello:
    """aiohttp does not trust the test CA: its handshake fails, but its hello has been recorded."""

    async def main() -> None:
        f = Fetcher(make_session(SETTINGS), SETTINGS)
        try:
            with pytest.raises(ConnectError):
                await f.fetch(server.url + "/", None)
        finally:
            await f.aclose()

    before = len(server.hellos)
    asyncio.run(main())
    return server.wait_for(before + 1)[before]


def test_chrome_impersonation_sends_a_browser_hello_unlike_aiohttp(
    hello_server: HelloServer, certs: tuple[str, str, str]
) -> None:
    ca = certs[0]
    r1 = _fetch_curl(hello_server.url + "/", ca, "chrome")
    r2 = _fetch_curl(hello_server.url + "/", ca, "chrome")
    assert r1.status == 200 and r1.body and b"hello" in r1.body and r1.http_version == "1.1"
    chrome1, chrome2 = hello_server.wait_for(2)[:2]
    python = _aiohttp_hello(hello_server)
    assert chrome1.has_grease and chrome1.alpn == ("h2", "http/1.1") and chrome1.sni == "localhost"
    assert chrome1.ja4.startswith("t13d") and chrome1.ja4[8:10] == "h2"
    # Chrome permutes its extension order per connection (so JA3 varies); JA4 sorts them and stays
    assert chrome1.ja4 == chrome2.ja4
    assert {e for e in chrome1.extensions if not is_grease(e)} == {e for e in chrome2.extensions if not is_grease(e)}
    assert not python.has_grease and python.alpn != ("h2", "http/1.1")
    assert python.ja3 not in (chrome1.ja3, chrome2.ja3) and python.ja4 != chrome1.ja4
    assert r2.status == 200


def test_firefox_and_plain_curl_have_fingerprints_of_their_own(
    hello_server: HelloServer, certs: tuple[str, str, str]
) -> None:
    ca = certs[0]
    assert _fetch_curl(hello_server.url + "/", ca, "chrome").status == 200
    assert _fetch_curl(hello_server.url + "/", ca, "firefox").status == 200
    assert _fetch_curl(hello_server.url + "/", ca, None).status == 200
    chrome, firefox, plain = hello_server.wait_for(3)[:3]
    assert len({chrome.ja4, firefox.ja4, plain.ja4}) == 3
    assert not firefox.has_grease and firefox.alpn == ("h2", "http/1.1")  # Firefox sends no GREASE


def test_the_browser_hello_goes_through_the_gateway_connect_tunnel(
    hello_server: HelloServer, certs: tuple[str, str, str]
) -> None:
    proxy = ProxyServer(user=PROXY_USER, password=PROXY_PASSWORD)
    r = _fetch_curl(hello_server.url + "/", certs[0], "chrome", proxy)
    assert r.status == 200 and r.peer_ip == "127.0.0.1"
    assert proxy.stats()["connects"] == 1 and proxy.stats()["auth_failures"] == 0
    direct = _fetch_curl(hello_server.url + "/", certs[0], "chrome")
    tunnelled, plain = hello_server.wait_for(2)[:2]
    assert direct.status == 200
    assert tunnelled.has_grease and tunnelled.alpn == ("h2", "http/1.1") and tunnelled.ja4 == plain.ja4


def test_the_hello_parser_reads_what_python_ssl_sends(certs: tuple[str, str, str], tmp_path: Path) -> None:
    """A hello built by Python's own ssl module with chosen ALPN, SNI and TLS 1.2 ciphers parses back to them."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2", "spdy/3", "http/1.1"])
    ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="example.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    message = handshake_message(outgoing.read())
    assert message is not None
    hello = parse_client_hello(message)
    assert hello.alpn == ("h2", "spdy/3", "http/1.1") and hello.sni == "example.test"
    assert {0xC02F, 0xC030} <= set(hello.ciphers) and not hello.has_grease
    assert hello.ja4.startswith("t13d") and hello.ja4[8:10] == "h2"
    assert int(hello.ja4[4:6]) == len(hello.ciphers) and int(hello.ja4[6:8]) == len(hello.extensions)
    assert hello.ja3_string.split(",")[1] == "-".join(map(str, hello.ciphers))


def test_grease_values() -> None:
    assert [v for v in range(0x10000) if is_grease(v)] == [0x0A0A + 0x1010 * i for i in range(16)]


# ------------------------------------------------------------------------------------------------ HTTP/2
H2_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("<title>h2</title>" + scope["http_version"]).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/html"), (b"x-seen-version", scope["http_version"].encode())]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture
def h2_server(certs: tuple[str, str, str], tmp_path: Path) -> Iterator[str]:
    import subprocess
    import sys

    from crawler.testing.services import free_port, stop_process, wait_until

    _, chain, key = certs
    (tmp_path / "h2app.py").write_text(H2_APP)
    port = free_port()
    log = tmp_path / "hypercorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypercorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--certfile",
                chain,
                "--keyfile",
                key,
                "h2app:app",
            ],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        import socket

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 15)
        yield f"https://localhost:{port}"
    finally:
        stop_process(proc, 10)


def test_an_http2_server_sees_http2_requests_from_the_curl_fetcher(h2_server: str, certs: tuple[str, str, str]) -> None:
    r = _fetch_curl(h2_server + "/", certs[0], "chrome")
    assert r.status == 200 and r.http_version == "2" and r.body == b"<title>h2</title>2"
    assert ("x-seen-version", "2") in r.raw_headers and r.reason == ""
    sent = dict((k.lower(), v) for k, v in r.request_headers)  # the HTTP/2 request as curl sent it
    assert sent["user-agent"].startswith("Mozilla/5.0") and sent["sec-ch-ua-mobile"] == "?0", r.request_headers
    plain = _fetch_curl(h2_server + "/", certs[0], None)
    assert plain.http_version == "2"  # curl offers h2 by ALPN without a profile too


@pytest.mark.parametrize("kind", ["aiohttp", "curl"])
def test_wrong_credentials_on_a_connect_tunnel_are_proxy_auth_errors(
    hello_server: HelloServer, certs: tuple[str, str, str], kind: str
) -> None:
    """An https URL goes through CONNECT; the gateway's 407 there is ProxyAuthError, and no hello reaches the
    site."""

    async def main() -> tuple[BaseException | None, dict[str, Any]]:
        proxy = ProxyServer(user=PROXY_USER, password=PROXY_PASSWORD)
        await proxy.start()
        pool = ProxyPool((proxy.url.replace("http://", f"http://{PROXY_USER}:wrong-password@"),))
        f: Any = (
            CurlFetcher(SETTINGS, impersonate="chrome", verify=certs[0])
            if kind == "curl"
            else Fetcher(make_session(SETTINGS), SETTINGS)
        )
        try:
            await f.fetch(hello_server.url + "/", pool.choose())
            return None, proxy.stats()
        except ProxyAuthError as exc:
            return exc, proxy.stats()
        finally:
            await f.aclose()
            await proxy.close()

    error, stats = asyncio.run(main())
    assert isinstance(error, ProxyAuthError) and stats["connects"] == 1 and stats["auth_failures"] == 1, stats
    assert hello_server.hellos == []
