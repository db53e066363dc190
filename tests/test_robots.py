"""robots.txt: RFC 9309 matching (pure) and the per-host cache (one fetch however many ask)."""

from __future__ import annotations

import asyncio

import pytest

from crawler.robots import RobotsCache, parse_robots

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
    assert parse_robots(ROBOTS, "crawl/0.1").allowed(path) is allowed


def test_own_group_wins_over_star() -> None:
    rules = parse_robots("User-agent: crawl\nDisallow: /a\n\nUser-agent: *\nDisallow: /\n", "crawl/0.1 (+x)")
    assert rules.allowed("/b") and not rules.allowed("/a/1")
    assert not parse_robots(ROBOTS, "otherbot/2").allowed("/anything")


def test_equal_length_tie_goes_to_allow() -> None:
    rules = parse_robots("User-agent: *\nDisallow: /page\nAllow: /page\n", "crawl")
    assert rules.allowed("/page")


@pytest.mark.parametrize(
    ("status", "verdict"), [(200, False), (404, True), (403, True), (500, None), (503, None), (0, None)]
)
def test_cache_status_semantics_and_single_fetch(status: int, verdict: bool | None) -> None:
    calls: list[str] = []

    async def fetch(url: str) -> tuple[int, bytes]:
        calls.append(url)
        await asyncio.sleep(0.01)
        return status, b"User-agent: *\nDisallow: /x\n"

    async def main() -> list[bool | None]:
        cache = RobotsCache(fetch, "crawl/0.1")
        return await asyncio.gather(*(cache.allowed(f"http://h.example:81/x/{i}") for i in range(50)))

    results = asyncio.run(main())
    assert calls == ["http://h.example:81/robots.txt"]
    assert set(results) == {verdict}
