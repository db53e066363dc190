"""Regression tests for review findings: big link batches are split, malformed secret URLs are masked."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from crawler.connection import validate_redis_url
from crawler.errors import ConfigError
from crawler.frontier import LINKS_PER_CALL, Frontier, NewLink, Settlement
from crawler.proxies import parse_proxy_url
from crawler.redact import redact_url, url_password
from crawler.testing.services import RedisServer
from crawler.urls import normalize


def test_settle_splits_a_huge_link_batch_and_loses_none(redis_server: RedisServer, crawl_name: str) -> None:
    n_links = 2 * LINKS_PER_CALL + 123

    async def main() -> None:
        r = aioredis.Redis.from_url(redis_server.url)
        try:
            f = Frontier(r, crawl_name)
            await f.add([normalize("http://seed.example/")])
            leases, _ = await f.lease(1, "w", 30)
            links = [NewLink.of(normalize(f"http://h{i % 50}.example/p/{i}"), 1) for i in range(n_links)]
            acked = await f.settle(Settlement(leases, links))
            c = await f.counters()
            assert acked == 1 and c.consistent
            assert c.enqueued == 1 + n_links and c.queued == n_links and c.done == 1
        finally:
            await r.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("url", ["http://user:pa/ss@gw:8000", "http://user:pa#ss@gw:8000"])
def test_malformed_proxy_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_proxy_url(url)
    assert "pa/ss" not in str(info.value) and "pa#ss" not in str(info.value)
    assert "pa" not in redact_url(url).split("@")[0]
    assert url_password(url) in ("pa/ss", "pa#ss")


@pytest.mark.parametrize("url", ["redis://:p#ss-word@h:1/0", "redis://:pa/ss-word@h:1/0"])
def test_malformed_redis_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_redis_url(url)
    assert "ss-word" not in str(info.value) and "'p" not in str(info.value)


def test_robots_redirect_to_a_private_literal_is_blocked_not_fetched() -> None:
    """robots.txt is fetched through the same hop-by-hop redirect code as pages, so its redirects pass the guard."""
    from aiohttp import web

    from crawler.errors import BlockedAddress
    from crawler.fetch import Fetcher, make_session
    from crawler.settings import Settings
    from crawler.ssrf import TrustCache

    async def robots(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://169.254.169.254/robots.txt"})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/robots.txt", robots)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        settings = Settings.from_flags(timeout=5)

        async def seed_only(host: str) -> bool:
            return host == "127.0.0.1"

        trust = TrustCache(seed_only)
        try:
            async with make_session(settings, trust) as session:
                fetcher = Fetcher(session, settings, trust=trust)
                with pytest.raises(BlockedAddress):
                    await fetcher.fetch_small(f"http://127.0.0.1:{port}/robots.txt", None)
        finally:
            await runner.cleanup()

    asyncio.run(main())
