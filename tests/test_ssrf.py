"""SSRF guard: private, loopback and link-local targets a page points at are refused, not fetched.

Unit tests of `crawler.ssrf.is_private_address`, then end-to-end crawls of a seed page (on 127.0.0.1, trusted
because it is a seed host) linking and redirecting to cloud metadata, RFC 1918 and loopback names. The page is
served by this module itself, run as a subprocess: ``python -m tests.test_ssrf --port 0`` prints ``READY <url>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from crawler.ssrf import is_private_address
from crawler.testing.services import RedisServer, RunningServer, start_server
from crawler.urls import normalize
from tests.fetch_params import FETCHERS, fetcher_flags
from tests.helpers import crawl, enqueue, read_records, stats, worker_args

# ------------------------------------------------------------------------------------------------ unit tests
PRIVATE = [
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "192.168.255.255",
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",  # AWS/GCP/Azure instance metadata
    "169.254.0.1",
    "0.0.0.0",
    "::1",
    "[::1]",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6 (fd00::/8 is in fc00::/7)
    "fdff:ffff::1",
    "fe80::1",
    "fe80::1%eth0",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::",
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",  # just past 172.16.0.0/12
    "172.15.255.255",  # just before it
    "192.169.0.1",
    "11.0.0.1",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "example.com",  # not an address at all
    "",
]


@pytest.mark.parametrize("addr", PRIVATE)
def test_private_addresses_are_private(addr: str) -> None:
    assert is_private_address(addr) is True


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_and_names_are_not(addr: str) -> None:
    assert is_private_address(addr) is False


# RFC 6598 shared address space: Alibaba Cloud's instance metadata service is 100.100.100.200 (missed by the
# is_private/is_loopback/... list before d970d3f, which switched to `not is_global`)
@pytest.mark.parametrize("addr", ["100.100.100.200", "100.64.0.1"])
def test_shared_address_space_metadata_endpoint_is_private(addr: str) -> None:
    assert is_private_address(addr) is True


# ------------------------------------------------------------------------------------ the page under test
def make_app() -> web.Application:
    """Seed pages linking and redirecting to private targets; /x/<k> pages count their requests."""
    hits: dict[str, int] = {}

    def page(title: str, hrefs: list[str]) -> web.Response:
        links = "".join(f'<a href="{h}">{i}</a>\n' for i, h in enumerate(hrefs))
        return web.Response(
            text=f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{links}</body></html>",
            content_type="text/html",
        )

    def port(request: web.Request) -> int:
        p = request.url.port
        assert p is not None
        return p

    async def seed_private(request: web.Request) -> web.Response:
        p = port(request)
        return page(
            "seed",
            [
                "http://169.254.169.254/latest/meta-data",
                "http://10.0.0.1/",
                f"http://localhost:{p}/x/local",
                "/redirect?to=http://169.254.169.254/latest/meta-data/iam",
                "/redirect?to=http://10.0.0.2/",
                f"/redirect?to=http://localhost:{p}/x/redirected",
                f"/redirect?to=http://[::1]:{p}/x/v6",
                f"/redirect?to=http://[::ffff:127.0.0.1]:{p}/x/mapped",
            ],
        )

    async def seed_local(request: web.Request) -> web.Response:
        p = port(request)
        return page("seed local", [f"http://localhost:{p}/x/local", f"/redirect?to=http://localhost:{p}/x/redirected"])

    async def seed_numeric(request: web.Request) -> web.Response:
        p = port(request)
        # 2130706433, 127.1 and 0x7f.1 all mean 127.0.0.1 to inet_aton
        return page(
            "seed numeric",
            [
                f"http://2130706433:{p}/x/decimal",
                f"/redirect?to=http://2130706433:{p}/x/decimal-redirect",
                f"/redirect?to=http://127.1:{p}/x/short-redirect",
                f"http://0x7f.1:{p}/x/hex",
                f"/redirect?to=http://0x7f.1:{p}/x/hex-redirect",
            ],
        )

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def x(request: web.Request) -> web.Response:
        k = request.match_info["k"]
        hits[k] = hits.get(k, 0) + 1
        return page(f"X {k}", [])

    async def stats_(request: web.Request) -> web.Response:
        return web.json_response({"hits": hits})

    app = web.Application()
    app.router.add_get("/seed", seed_private)
    app.router.add_get("/seed-local", seed_local)
    app.router.add_get("/seed-numeric", seed_numeric)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/x/{k}", x)
    app.router.add_get("/__stats", stats_)
    return app


def main(argv: list[str] | None = None) -> int:
    from crawler.testing.serving import bind_socket, run_prefork

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    return run_prefork(make_app, bind_socket("127.0.0.1", args.port), None, 1, use_uvloop=False)


@pytest.fixture(scope="module")
def pages() -> Iterator[RunningServer]:
    with start_server("tests.test_ssrf", "--port", 0) as s:
        yield s


@pytest.fixture(params=FETCHERS)
def fetcher(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Worker flags selecting each fetcher in turn: the guarantees below hold for both."""
    return fetcher_flags(str(request.param))


def hits(server: RunningServer) -> dict[str, int]:
    data: dict[str, int] = server.stats()["hits"]
    return data


def run_crawl(redis: RedisServer, name: str, out: Path, *extra: str) -> tuple[dict[str, dict[str, Any]], float]:
    started = time.monotonic()
    # --timeout 30: a real connection to a black-holed address would take that long; a refused one is instant
    run = crawl(
        worker_args(
            redis.url, name, out, "--until-idle", "--timeout", "30", "--retries", "0", "--max-depth", "1", *extra
        ),
        timeout_s=90,
    )
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = read_records(out)
    s = stats(redis.url, name)
    assert s["done"] + s["dead"] == s["enqueued"] and s["queued"] == s["inflight"] == s["deferred"] == 0, s
    return {r["url"]: r for r in records}, elapsed


def dead_json(redis: RedisServer, name: str) -> str:
    return crawl(["dead", "--json", "--redis", redis.url, "--crawl", name]).stdout


# ------------------------------------------------------------------------------------------- end to end
def test_links_and_redirects_to_private_targets_are_recorded_as_blocked_without_a_connection(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, pages: RunningServer, fetcher: tuple[str, ...]
) -> None:
    base = pages.url
    port = base.rsplit(":", 1)[1]
    enqueue(redis_server, crawl_name, tmp_path, [f"{base}/seed"])
    before = hits(pages)
    records, elapsed = run_crawl(
        redis_server,
        crawl_name,
        tmp_path / "out",
        *fetcher,
        "--no-robots",
        "--allow-domain",
        "169.254.169.254",
        "--allow-domain",
        "10.0.0.1",
        "--allow-domain",
        "localhost",
    )
    literal = ["http://169.254.169.254/latest/meta-data", "http://10.0.0.1/"]
    resolved = [f"http://localhost:{port}/x/local"]
    redirected = [
        f"{base}/redirect?to=http://169.254.169.254/latest/meta-data/iam",
        f"{base}/redirect?to=http://10.0.0.2/",
        f"{base}/redirect?to=http://localhost:{port}/x/redirected",
        f"{base}/redirect?to=http://[::1]:{port}/x/v6",
        f"{base}/redirect?to=http://[::ffff:127.0.0.1]:{port}/x/mapped",
    ]
    redirected = [normalize(u).url for u in redirected]  # "[" and "]" in the query are %-encoded
    expected = {f"{base}/seed", *literal, *resolved, *redirected}
    assert set(records) == expected, (set(records), dead_json(redis_server, crawl_name))
    assert records[f"{base}/seed"]["status"] == 200
    for url in literal + resolved + redirected:
        r = records[url]
        assert r["error"] == "blocked_address" and r["status"] is None, r
    # literal private addresses are refused before any fetch attempt
    for url in literal:
        assert records[url]["attempts"] == 0, records[url]
    # nothing reached the loopback pages (localhost and the [::1] / mapped redirects point at this server)
    assert hits(pages) == before, hits(pages)
    assert elapsed < 20, f"the crawl took {elapsed:.1f}s: something waited on a connection"


def test_allow_private_networks_fetches_the_same_private_name(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, pages: RunningServer, fetcher: tuple[str, ...]
) -> None:
    base = pages.url
    port = base.rsplit(":", 1)[1]
    enqueue(redis_server, crawl_name, tmp_path, [f"{base}/seed-local"])
    before = hits(pages)
    records, _ = run_crawl(
        redis_server,
        crawl_name,
        tmp_path / "out",
        *fetcher,
        "--no-robots",
        "--allow-domain",
        "localhost",
        "--allow-private-networks",
    )
    local = records[f"http://localhost:{port}/x/local"]
    assert local["status"] == 200 and local["error"] is None and local["title"] == "X local", local
    red = records[f"{base}/redirect?to=http://localhost:{port}/x/redirected"]
    assert red["status"] == 200 and red["final_url"] == f"http://localhost:{port}/x/redirected", red
    after = hits(pages)
    assert after.get("local", 0) == before.get("local", 0) + 1
    assert after.get("redirected", 0) == before.get("redirected", 0) + 1


def test_without_allow_private_networks_the_same_crawl_is_blocked(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, pages: RunningServer, fetcher: tuple[str, ...]
) -> None:
    """The control for the test above: same seed, same scope, guard on."""
    base = pages.url
    port = base.rsplit(":", 1)[1]
    enqueue(redis_server, crawl_name, tmp_path, [f"{base}/seed-local"])
    before = hits(pages)
    records, _ = run_crawl(
        redis_server, crawl_name, tmp_path / "out", *fetcher, "--no-robots", "--allow-domain", "localhost"
    )
    assert records[f"http://localhost:{port}/x/local"]["error"] == "blocked_address"
    assert records[f"{base}/redirect?to=http://localhost:{port}/x/redirected"]["error"] == "blocked_address"
    assert hits(pages) == before


def test_numeric_ipv4_forms_of_loopback_are_never_fetched(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, pages: RunningServer, fetcher: tuple[str, ...]
) -> None:
    """inet_aton spellings of 127.0.0.1 (`2130706433`, `0x7f.1`, `127.1`) are one address: the WHATWG parser
    canonicalises them to 127.0.0.1, so the literal check sees the loopback address. The seed is `localhost` (a
    name, trusted as the user's own seed host), so 127.0.0.1 under any spelling is a private address nobody asked
    for: nothing may reach the loopback server through it, directly or by a redirect."""
    port = pages.url.rsplit(":", 1)[1]
    base = f"http://localhost:{port}"
    enqueue(redis_server, crawl_name, tmp_path, [f"{base}/seed-numeric"])
    before = hits(pages)
    records, _ = run_crawl(
        redis_server, crawl_name, tmp_path / "out", *fetcher, "--no-robots", "--allow-domain", "127.0.0.1"
    )
    dead = {e["url"]: e for e in map(json.loads, dead_json(redis_server, crawl_name).splitlines())}
    direct = [f"http://127.0.0.1:{port}/x/decimal", f"http://127.0.0.1:{port}/x/hex"]  # as the links spelled them
    redirects = [
        f"{base}/redirect?to=http://2130706433:{port}/x/decimal-redirect",
        f"{base}/redirect?to=http://127.1:{port}/x/short-redirect",
        f"{base}/redirect?to=http://0x7f.1:{port}/x/hex-redirect",
    ]
    assert set(records) | set(dead) == {f"{base}/seed-numeric", *direct, *redirects}, (set(records), set(dead))
    assert hits(pages) == before, f"the crawler connected to loopback: {hits(pages)}"
    for url in direct:
        assert records[url]["error"] == "blocked_address", records[url]
    for url in redirects:  # a redirect to a numeric form is refused by the guard, or by the client as invalid
        outcome = records[url]["error"] if url in records else dead[url]["error"]["kind"]
        assert outcome in ("blocked_address", "invalid_url"), (records.get(url), dead.get(url))


def test_blocked_name_with_robots_on_is_recorded_as_blocked(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, pages: RunningServer, fetcher: tuple[str, ...]
) -> None:
    base = pages.url
    port = base.rsplit(":", 1)[1]
    enqueue(redis_server, crawl_name, tmp_path, [f"{base}/seed-local"])
    """With robots on (the default) the robots.txt fetch of the blocked name is refused first. Before d970d3f
    Fetcher.fetch_small turned that into "unreachable": the URL was deferred 60 s per attempt and dead-lettered as
    robots_unreachable. --retries 0 keeps that wrong path fast (dead at once) should it come back."""
    before = hits(pages)
    records, _ = run_crawl(redis_server, crawl_name, tmp_path / "out", *fetcher, "--allow-domain", "localhost")
    assert hits(pages) == before
    assert records[f"{base}/seed-local"]["status"] == 200
    local = records.get(f"http://localhost:{port}/x/local")
    assert local is not None and local["error"] == "blocked_address", (local, dead_json(redis_server, crawl_name))


if __name__ == "__main__":
    sys.exit(main())
