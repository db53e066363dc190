"""robots.txt: RFC 9309 parsing and matching (pure), and the per-origin cache (one fetch, typed outcomes)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from crawler.errors import BlockedAddress, ConfigError, ConnectError, FetchTimeout, ProxyAuthError, TooManyRedirects
from crawler.fetch import Fetcher, make_session
from crawler.proxies import ProxyChoice
from crawler.robots import (
    MAX_ROBOTS_BYTES,
    MAX_SITEMAPS,
    RobotsRules,
    RobotsState,
    canonical_path,
    make_rule,
    parse_robots,
    product_token,
)
from crawler.robots_cache import CHECK_THREAD_COST, RobotsCache, split_url
from crawler.settings import DEFAULT_USER_AGENT, Settings
from crawler.testing.services import free_port

ROBOTS = """
User-agent: otherbot
Disallow: /

User-agent: *
Disallow: /private/
Allow: /private/public
Disallow: /*.pdf$
Disallow: /search?
# a comment
Disallow:
"""


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/", True),
        ("/private/x", False),
        ("/private/public/y", True),  # the longer Allow wins
        ("/doc.pdf", False),
        ("/doc.pdf?x=1", True),  # $ anchors the end
        ("/search?q=1", False),
        ("/searching", True),
        ("/robots.txt", True),
    ],
)
def test_longest_match_wins(path: str, allowed: bool) -> None:
    assert parse_robots(ROBOTS, "crawl").allowed(path) is allowed


def test_robots_txt_itself_is_always_allowed() -> None:
    assert parse_robots("User-agent: *\nDisallow: /\n", "crawl").allowed("/robots.txt")


def test_equal_length_tie_goes_to_allow() -> None:
    assert parse_robots("User-agent: *\nDisallow: /page\nAllow: /page\n", "crawl").allowed("/page")


# -- encoding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"\xef\xbb\xbfUser-agent: *\nDisallow: /x\n", "\ufeffUser-agent: *\nDisallow: /x\n"])
def test_a_byte_order_mark_does_not_cost_the_first_line(body: bytes | str) -> None:
    rules = parse_robots(body, "crawl")
    assert not rules.allowed("/x/1") and rules.allowed("/y")


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    rules = parse_robots(b"User-agent: *\nDisallow: /\xff\xfe\nDisallow: /b\n", "crawl")
    assert not rules.allowed("/b") and rules.allowed("/a")


@pytest.mark.parametrize(
    ("rule", "path", "allowed"),
    [
        ("/a%2Fb", "/a/b", True),  # an encoded reserved character is not the character
        ("/a%2Fb", "/a%2fb", False),  # hex case does not matter
        ("/a/b", "/a%2Fb", True),
        ("/a%2A", "/abc", True),  # %2A is a literal '*', not a wildcard
        ("/a%2A", "/a%2A", False),
        ("/a*", "/a%2A", False),  # a literal '*' in the rule is the wildcard
        ("/a%24", "/a", True),  # %24 is a literal '$', not an anchor
        ("/a%24", "/a%24x", False),
        ("/a$b", "/a$b", False),  # '$' not at the end is literal
        ("/%7Euser", "/~user", False),  # unreserved characters are decoded
        ("/~user", "/%7euser/x", False),
        ("/caf%C3%A9", "/café", False),  # non-ASCII compared as UTF-8 percent-encoding
        ("/café", "/caf%c3%a9", False),
        ("/a b", "/a%20b", False),  # characters neither reserved nor unreserved have one (encoded) form
        ("/a|b", "/a%7Cb", False),
        ("/100%", "/100%25", False),  # a lone '%' is data
    ],
)
def test_rule_and_path_compared_in_one_canonical_encoding(rule: str, path: str, allowed: bool) -> None:
    assert parse_robots(f"User-agent: *\nDisallow: {rule}\n", "crawl").allowed(path) is allowed


def test_canonical_form_is_ascii_and_stable() -> None:
    for text in ["/caf%c3%a9?q=%7e&r=%2f", "/ü ä/%41%2a", "/plain/path?x=1"]:
        once = canonical_path(text)
        assert once.isascii() and canonical_path(once) == once
    assert canonical_path("/%41%2a%zz") == "/A%2A%25zz"


def test_rule_length_counts_octets_not_characters() -> None:
    """`/ü` is 7 octets encoded (`/%C3%BC`), so it beats the 6-octet `/*aaaa`; counting decoded characters (2) would
    let the Disallow win."""
    rules = parse_robots("User-agent: *\nDisallow: /*aaaa\nAllow: /ü\n", "crawl")
    assert rules.allowed("/%C3%BCaaaa") and rules.allowed("/üaaaa")
    assert not rules.allowed("/xaaaa")


# -- agents and groups -------------------------------------------------------------------------------------------


def test_group_value_is_read_up_to_the_first_character_outside_the_token_alphabet() -> None:
    rules = parse_robots("User-agent: crawl/0.1\nDisallow: /mine\n\nUser-agent: *\nDisallow: /\n", "crawl")
    assert not rules.allowed("/mine/1") and rules.allowed("/other")
    assert not parse_robots("User-agent: CRAWL (+bot)\nDisallow: /a\n", "crawl").allowed("/a")
    # a longer name is another agent: `crawler` is not `crawl`
    assert parse_robots("User-agent: crawler\nDisallow: /\n", "crawl").allowed("/a")


def test_groups_for_the_same_agent_merge_and_fall_back_to_star() -> None:
    text = "User-agent: crawl\nDisallow: /a\n\nUser-agent: *\nDisallow: /\n\nUser-agent: Crawl\nDisallow: /b\n"
    rules = parse_robots(text, "crawl")
    assert not rules.allowed("/a") and not rules.allowed("/b") and rules.allowed("/c")
    assert not parse_robots(text, "otherbot").allowed("/c")  # no group of its own: the `*` group


def test_default_agent_is_the_default_user_agents_product_token() -> None:
    assert product_token(DEFAULT_USER_AGENT) == "crawl"
    assert product_token("Mozilla/5.0 (X11; Linux x86_64)") == "Mozilla"
    with pytest.raises(ConfigError):
        product_token("/5.0")


def test_a_browser_style_user_agent_does_not_make_us_obey_mozilla() -> None:
    """The agent is a token given explicitly (`--robots-agent`), never taken from the User-Agent header."""
    text = "User-agent: Mozilla\nDisallow: /\n\nUser-agent: crawl\nDisallow: /private\n"
    rules = parse_robots(text, product_token(DEFAULT_USER_AGENT))
    assert rules.allowed("/page") and not rules.allowed("/private")

    async def fetch(url: str) -> tuple[int, bytes]:
        return 200, text.encode()

    with pytest.raises(ConfigError):
        RobotsCache(fetch, "Mozilla/5.0 (compatible; crawl/0.1)")  # a User-Agent is not a token
    assert asyncio.run(RobotsCache(fetch, "crawl").allowed("http://h.example/page")) is True


# -- size cap ----------------------------------------------------------------------------------------------------


def _capped(last_line: bytes) -> bytes:
    head = b"User-agent: *\nDisallow: /\nAllow: /keep\n"
    filler = b"# " + b"x" * 98 + b"\n"
    body = head + filler * ((MAX_ROBOTS_BYTES - len(head)) // len(filler) + 1)
    body = body[: MAX_ROBOTS_BYTES - len(last_line)] + last_line
    assert len(body) == MAX_ROBOTS_BYTES
    return body


def test_a_line_cut_by_the_size_cap_is_dropped() -> None:
    body = _capped(b"\nAllow: /pub")  # the fetcher cut "Allow: /public" at the cap
    rules = parse_robots(body, "crawl")
    assert not rules.allowed("/pub-x")  # not read as "Allow: /pub"
    assert rules.allowed("/keep/1")  # the complete lines before it stay
    assert parse_robots(body, "crawl", truncated=False).allowed("/pub-x")  # told it was complete: kept


def test_a_body_longer_than_the_cap_is_cut_at_the_cap() -> None:
    body = _capped(b"\nAllow: /pub") + b"lic\nAllow: /after\n"
    rules = parse_robots(body, "crawl")
    assert not rules.allowed("/public") and not rules.allowed("/after") and rules.allowed("/keep")


def test_a_short_body_keeps_its_last_line_without_newline() -> None:
    assert parse_robots(b"User-agent: *\nDisallow: /x", "crawl").allowed("/x") is False


# -- Crawl-delay and Sitemap -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "delay"),
    [("5", 5.0), ("0.5", 0.5), (".25", 0.25), ("2.", 2.0), ("abc", None), ("-1", None), ("inf", None), ("nan", None)],
)
def test_crawl_delay_is_parsed_and_invalid_values_ignored(value: str, delay: float | None) -> None:
    assert parse_robots(f"User-agent: *\nCrawl-delay: {value}\nDisallow: /x\n", "crawl").crawl_delay_s == delay


def test_crawl_delay_comes_from_the_matched_groups_only() -> None:
    text = (
        "Crawl-delay: 99\n"  # outside any group
        "User-agent: *\nCrawl-delay: 7\nDisallow: /x\n\n"
        "User-agent: crawl\nCrawl-delay: 2\nDisallow: /y\n\n"
        "User-agent: otherbot\nCrawl-delay: 30\nDisallow: /z\n\n"
        "User-agent: crawl\nCrawl-delay: 3\n"
    )
    assert parse_robots(text, "crawl").crawl_delay_s == 3.0  # the largest of our merged groups
    assert parse_robots(text, "anybot").crawl_delay_s == 7.0
    assert parse_robots("User-agent: *\nDisallow: /\n", "crawl").crawl_delay_s is None


def test_crawl_delay_does_not_end_a_group() -> None:
    rules = parse_robots("User-agent: otherbot\nCrawl-delay: 4\nUser-agent: crawl\nDisallow: /x\n", "crawl")
    assert not rules.allowed("/x") and rules.crawl_delay_s == 4.0


def test_sitemaps_are_collected_from_anywhere_in_order_and_bounded() -> None:
    text = (
        "Sitemap: https://h.example/a.xml\n"
        "User-agent: otherbot\nDisallow: /\nsitemap: https://h.example/b.xml # comment\n"
        "User-agent: *\nSitemap: https://h.example/a.xml\nSITEMAP:https://other.example/c.xml.gz\n"
    )
    rules = parse_robots(text, "crawl")
    assert rules.sitemaps == ("https://h.example/a.xml", "https://h.example/b.xml", "https://other.example/c.xml.gz")
    many = "".join(f"Sitemap: https://h.example/s{i}.xml\n" for i in range(MAX_SITEMAPS + 50))
    kept = parse_robots(many, "crawl").sitemaps
    assert len(kept) == MAX_SITEMAPS and kept[-1] == f"https://h.example/s{MAX_SITEMAPS - 1}.xml"


# -- linear matching ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_a_pathological_pattern_on_a_long_path_completes() -> None:
    """A backtracking regex needs seconds for this on 100 characters; segment matching is linear per segment."""
    rules = parse_robots("User-agent: *\nDisallow: /*/*/*/*/*/*/*/*.pdf$\n", "crawl")
    long = "/" + "a/" * 50_000
    assert rules.allowed(long + "x.pdx")
    assert not rules.allowed(long + "x.pdf")
    assert rules.allowed("/" + "a" * 100_000)  # too few slashes


@pytest.mark.timeout(10)
def test_a_file_full_of_wildcards_stays_bounded() -> None:
    body = "User-agent: *\n" + "".join(f"Disallow: /*a*a*a*a*a*a*{i}$\n" for i in range(20_000))
    rules = parse_robots(body, "crawl")
    assert len(rules.rules) == 20_000
    path = "/" + "a" * 2_000
    assert rules.allowed(path) and not rules.allowed(path + "19999")


def _reference_match(pattern: str, path: str) -> bool:
    """RFC 9309 matching by a backtracking regex: fine as an oracle on short strings, never in the crawler."""
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(part) for part in body.split("*")) + ("$" if anchored else "")
    return re.match(regex, path, re.DOTALL) is not None


@given(
    pattern=st.text(alphabet="ab/*", min_size=1, max_size=12).flatmap(lambda p: st.sampled_from([p, p + "$"])),
    path=st.text(alphabet="ab/", max_size=16),
)
@hypothesis_settings(max_examples=2_000, deadline=None)
def test_segment_matching_agrees_with_a_backtracking_oracle(pattern: str, path: str) -> None:
    rule = make_rule(False, pattern)
    assert rule is not None
    assert rule.matches(path) is _reference_match(pattern, path)


def test_a_hostile_file_is_checked_off_the_event_loop_and_still_right() -> None:
    needle = "a" * 15 + "b" + "a" * 15
    body = "User-agent: *\n" + "".join(f"Disallow: /*{needle}*{i}$\n" for i in range(3_000)) + "Disallow: /*x9$\n"
    rules = parse_robots(body, "crawl")
    path = "/" + "a" * 1_000
    assert rules.check_cost(path) > CHECK_THREAD_COST  # RobotsCache.check runs this one in a thread
    typical = parse_robots(ROBOTS, "crawl")
    assert typical.check_cost("/private/public/y?q=" + "z" * 1_000) < CHECK_THREAD_COST  # this one inline

    async def fetch(url: str) -> tuple[int, bytes]:
        return 200, body.encode()

    async def main() -> tuple[bool | None, bool | None]:
        cache = RobotsCache(fetch, "crawl")
        return (await cache.check(f"http://h.example{path}")).allowed, await cache.allowed(f"http://h.example{path}x9")

    assert asyncio.run(main()) == (True, False)


def test_runs_of_stars_collapse_and_a_trailing_star_changes_nothing() -> None:
    rules = parse_robots("User-agent: *\nDisallow: /a***b\nDisallow: /c*$\n", "crawl")
    assert not rules.allowed("/a-x-b") and not rules.allowed("/c") and not rules.allowed("/c/anything")
    assert rules.allowed("/ac")


@pytest.mark.parametrize(
    ("url", "origin", "path"),
    [
        ("http://h.example:81/x/1?q=2#frag", "http://h.example:81", "/x/1?q=2"),
        ("https://user:pw@H.example/p", "https://h.example", "/p"),
        ("http://h.example?q", "http://h.example", "/?q"),
        ("http://h.example", "http://h.example", "/"),
    ],
)
def test_split_url(url: str, origin: str, path: str) -> None:
    assert split_url(url) == (origin, path)


# -- the cache ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict", "state"),
    [
        (200, False, RobotsState.PARSED),
        (404, True, RobotsState.UNAVAILABLE),
        (403, True, RobotsState.UNAVAILABLE),
        (301, True, RobotsState.UNAVAILABLE),  # redirects left after the fetcher followed five
        (429, None, RobotsState.UNREACHABLE),
        (500, None, RobotsState.UNREACHABLE),
        (503, None, RobotsState.UNREACHABLE),
        (0, None, RobotsState.UNREACHABLE),
    ],
)
def test_cache_status_semantics_and_single_fetch(status: int, verdict: bool | None, state: RobotsState) -> None:
    calls: list[str] = []
    gate, started = asyncio.Event(), asyncio.Event()

    async def fetch(url: str) -> tuple[int, bytes]:
        calls.append(url)
        started.set()
        await gate.wait()  # every asker is waiting before the one fetch answers
        return status, b"User-agent: *\nDisallow: /x\n"

    async def main() -> list[bool | None]:
        cache = RobotsCache(fetch, "crawl")
        tasks = [asyncio.create_task(cache.allowed(f"http://h.example:81/x/{i}")) for i in range(50)]
        await started.wait()  # the askers created before the fetch started are all waiting on it by now
        gate.set()
        results = await asyncio.gather(*tasks)
        rules = await cache.rules("http://h.example:81")
        assert rules.state is state and rules.status == (status or None) and rules.cause is None
        return results

    results = asyncio.run(main())
    assert calls == ["http://h.example:81/robots.txt"]
    assert set(results) == {verdict}


def test_unreachable_keeps_the_fetch_error_as_its_cause() -> None:
    async def fetch(url: str) -> tuple[int, bytes]:
        raise FetchTimeout("deadline passed")

    async def main() -> None:
        cache = RobotsCache(fetch, "crawl")
        verdict = await cache.check("http://h.example/a")
        assert verdict.allowed is None and verdict.rules.unreachable
        assert isinstance(verdict.rules.cause, FetchTimeout) and verdict.rules.cause.kind == "timeout"
        assert verdict.rules.cause.__traceback__ is None  # cached: it must not pin the frames
        assert await cache.allowed("http://h.example/b") is None and cache.fetches == 1

    asyncio.run(main())


def test_too_many_redirects_means_unavailable() -> None:
    async def fetch(url: str) -> tuple[int, bytes]:
        raise TooManyRedirects("more than 5 redirects")

    async def main() -> None:
        rules = await RobotsCache(fetch, "crawl").rules("http://h.example")
        assert rules.state is RobotsState.UNAVAILABLE and isinstance(rules.cause, TooManyRedirects)
        assert rules.allowed("/anything")

    asyncio.run(main())


@pytest.mark.parametrize("error", [ProxyAuthError("gateway refused the credentials (407)"), BlockedAddress("x")])
def test_a_gateway_407_and_a_blocked_address_reach_every_asker_and_are_not_cached(error: Exception) -> None:
    calls: list[str] = []
    gate, started = asyncio.Event(), asyncio.Event()

    async def fetch(url: str) -> tuple[int, bytes]:
        calls.append(url)
        started.set()
        await gate.wait()
        raise error

    async def main() -> None:
        cache = RobotsCache(fetch, "crawl")
        tasks = [asyncio.create_task(cache.allowed(f"http://h.example/{i}")) for i in range(5)]
        await started.wait()  # the askers created before the fetch started are all waiting on it by now
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(r is error for r in results)
        with pytest.raises(type(error)):
            await cache.allowed("http://h.example/again")
        assert len(calls) == 2  # not cached: the next asker tries again

    asyncio.run(main())


def test_the_cache_exposes_crawl_delay_and_sitemaps() -> None:
    async def fetch(url: str) -> tuple[int, bytes]:
        return 200, b"Sitemap: https://h.example/s.xml\nUser-agent: crawl\nCrawl-delay: 2.5\nDisallow: /x\n"

    async def main() -> None:
        rules = await RobotsCache(fetch, "crawl").rules("https://h.example")
        assert rules.crawl_delay_s == 2.5 and rules.sitemaps == ("https://h.example/s.xml",) and rules.status == 200

    asyncio.run(main())


def test_the_cache_is_bounded_by_bytes_as_well_as_entries() -> None:
    body = ("User-agent: *\n" + "".join(f"Disallow: /{i:06d}/{'p' * 80}\n" for i in range(4_000))).encode()

    async def fetch(url: str) -> tuple[int, bytes]:
        return 200, body  # over THREAD_PARSE_BYTES: parsed in a thread

    async def main() -> None:
        cache = RobotsCache(fetch, "crawl", size=1_000, max_bytes=3 * 1024 * 1024)
        for i in range(10):
            assert await cache.allowed(f"http://h{i}.example/000001/{'p' * 80}") is False
        assert 1 <= len(cache._rules) < 10 and cache._bytes <= 3 * 1024 * 1024
        assert "h9.example" in next(reversed(cache._rules))  # the newest stays

    asyncio.run(main())


# -- through the real fetcher ------------------------------------------------------------------------------------


@asynccontextmanager
async def _serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _robots_server_rules(body: bytes) -> tuple[RobotsRules, bool | None, bool | None]:
    """Serve `body` as /robots.txt on 127.0.0.1 and read it through the real Fetcher.fetch_small and RobotsCache."""

    async def robots(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    async def main() -> tuple[RobotsRules, bool | None, bool | None]:
        settings = Settings.from_flags(timeout=5)
        async with _serve(robots) as base, make_session(settings) as session:
            fetcher = Fetcher(session, settings)
            cache = RobotsCache(lambda url: fetcher.fetch_small(url, None), "crawl")
            private = await cache.allowed(f"{base}/private/1")
            public = await cache.allowed(f"{base}/public")
            return await cache.rules(base), private, public

    return asyncio.run(main())


def test_a_real_robots_txt_with_bom_and_crlf_through_the_fetcher() -> None:
    filler = b"".join(b"Disallow: /filler/%06d\r\n" % i for i in range(4_000))  # parsed in a thread
    body = b"\xef\xbb\xbfUser-agent: crawl\r\nDisallow: /private\r\nCrawl-delay: 1\r\n" + filler
    rules, private, public = _robots_server_rules(body + b"Sitemap: http://h.example/s.xml")
    assert private is False and public is True
    assert rules.crawl_delay_s == 1.0 and rules.status == 200 and rules.sitemaps == ("http://h.example/s.xml",)
    assert not rules.allowed("/filler/003999")


def test_a_robots_txt_over_the_cap_through_the_fetcher_is_cut_not_emptied() -> None:
    filler = b"".join(b"Disallow: /filler/%06d\r\n" % i for i in range(40_000))  # 1 MB
    body = b"User-agent: crawl\r\nDisallow: /private\r\n" + filler + b"Allow: /late\r\n"
    rules, private, public = _robots_server_rules(body)
    assert private is False and public is True
    assert not rules.allowed("/filler/000001") and rules.allowed("/filler/039999")  # cut at the cap


def test_a_gateway_407_on_robots_txt_is_a_proxy_auth_error_through_the_real_fetcher() -> None:
    async def gateway(request: web.Request) -> web.Response:
        return web.Response(status=407, headers={"Proxy-Authenticate": 'Basic realm="gw"'})

    async def main() -> None:
        settings = Settings.from_flags(timeout=5)
        async with _serve(gateway) as gw, make_session(settings) as session:
            fetcher = Fetcher(session, settings)
            proxy = ProxyChoice(url=gw, redacted=gw, index=0, session_id="s")
            cache = RobotsCache(lambda url: fetcher.fetch_small(url, proxy), "crawl")
            with pytest.raises(ProxyAuthError):
                await cache.allowed("http://site.example/page")

    asyncio.run(main())


def test_an_unreachable_host_through_the_real_fetcher_defers() -> None:
    port = free_port()  # nothing listens there: connection refused

    async def main() -> None:
        settings = Settings.from_flags(timeout=2, connect_timeout=1)
        async with make_session(settings) as session:
            fetcher = Fetcher(session, settings)
            cache = RobotsCache(lambda url: fetcher.fetch_small(url, None), "crawl")
            verdict = await cache.check(f"http://127.0.0.1:{port}/page")
            assert verdict.allowed is None and verdict.rules.unreachable
            assert isinstance(verdict.rules.cause, ConnectError)  # the real cause is kept for the record

    asyncio.run(main())
