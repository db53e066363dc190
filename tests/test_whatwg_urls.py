"""The fetch URL against the WHATWG URL Standard's own test data (web-platform-tests `urltestdata.json`).

Every case of the vendored file (tests/data/whatwg/README.md says where it comes from) is run through
`crawl_url` and through link resolution (`resolve`, what `<base>` and canonical links use). An http(s) case must
give the browser's href with the fragment dropped, or be refused where the browser fails; the only differences are
the deliberate ones below, each decided from the case's own expected data and counted, so a change in the data or
in the parser shows up as a failing case, not as a silently widened exception.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from crawler.urls import InvalidURL, crawl_url, dedup_key, fingerprint, resolve

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent / "data" / "whatwg" / "urltestdata.json"
CASES: list[dict[str, Any]] = [c for c in json.loads(DATA.read_text(encoding="utf-8")) if isinstance(c, dict)]
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")

# Deliberate differences, with their reason:
CREDENTIALS = "user-info is refused: it would be stored in Redis and printed in records and logs"
NOT_HTTP = "only http and https URLs are crawlable"
PORT_ZERO = "port 0 is valid to WHATWG but no TCP connection can be made to it: every fetch would fail"


def _scheme(text: str) -> str | None:
    m = _SCHEME.match(text.lstrip("".join(map(chr, range(33)))).replace("\t", "").replace("\n", "").replace("\r", ""))
    return m.group(1).lower() if m else None


def _is_http(case: dict[str, Any]) -> bool:
    """Would a browser give an http(s) URL here (or fail while reading one)?"""
    if not case.get("failure"):
        return case["protocol"] in ("http:", "https:")
    scheme = _scheme(case["input"]) or _scheme(case.get("base") or "")
    return scheme in ("http", "https")


def expected(case: dict[str, Any]) -> tuple[str, str | None]:
    """("href", the fetch URL) or ("refused", reason or None for a WHATWG failure)."""
    if case.get("failure"):
        return "refused", None
    if case["protocol"] not in ("http:", "https:"):
        return "refused", NOT_HTTP
    if case["username"] or case["password"]:
        return "refused", CREDENTIALS
    if case["port"] == "0":
        return "refused", PORT_ZERO
    href: str = case["href"]
    hash_at = href.find("#")  # the fragment is dropped; a "#" cannot appear earlier in a serialised URL
    return "href", href if hash_at < 0 else href[:hash_at]


def _id(case: dict[str, Any]) -> str:
    return f"{case['input']!r}@{case.get('base')!r}"[:80]


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_whatwg_case(case: dict[str, Any]) -> None:
    kind, want = expected(case)
    base = case.get("base")
    if kind == "href":
        got = crawl_url(case["input"], base)
        assert got.url == want
        assert got.host == case["host"]  # the politeness and robots.txt key is the browser's `host`
        assert " " not in got.url and "\n" not in got.url  # frontier entries split on both
        if base is not None:
            assert resolve(case["input"], base) == want
        return
    with pytest.raises(InvalidURL) as refused:
        crawl_url(case["input"], base)
    if want == CREDENTIALS:
        assert "credentials" in str(refused.value)
    elif want == NOT_HTTP:
        assert "is not http or https" in str(refused.value)
    elif want == PORT_ZERO:
        assert "port out of range" in str(refused.value)
    if base is not None:
        assert resolve(case["input"], base) is None  # link resolution never raises


def test_case_counts() -> None:
    """The table is what we think it is: the http(s) cases and the deliberate differences, counted."""
    http = [c for c in CASES if _is_http(c)]
    deliberate = [c for c in http if expected(c)[1] in (CREDENTIALS, PORT_ZERO)]
    assert len(CASES) > 800
    assert len(http) > 400
    assert 0 < len(deliberate) < 40  # every other http(s) case matches a browser exactly


# -- the dedup key, which only feeds the fingerprint ------------------------------------------------------------

SAME_KEY: list[list[str]] = [
    ["http://example.com/?s=a&p=2", "http://example.com/?p=2&s=a", "http://example.com/?p=2&utm_source=x&s=a&"],
    ["http://example.com/p?fbclid=1&gclid=2", "http://example.com/p", "http://example.com/p?"],
    ["http://example.com/%7euser", "http://example.com/~user", "http://EXAMPLE.com./%7Euser"],
    ["https://example.com/a|b", "https://example.com/a%7cb", "https://example.com/a%7Cb"],
]


@pytest.mark.parametrize("group", SAME_KEY, ids=[g[0] for g in SAME_KEY])
def test_dedup_key_merges_equivalents(group: list[str]) -> None:
    forms = [crawl_url(u) for u in group]
    assert len({f.fingerprint for f in forms}) == 1
    assert len({f.url for f in forms}) == len(group)  # while each keeps its own fetch URL
    assert {f.fingerprint for f in forms} == {fingerprint(dedup_key(forms[0].url))}


DIFFERENT_KEY = [
    "http://example.com/?a=1&a=2",
    "http://example.com/?a=2&a=1",  # repeated keys keep their order
    "http://example.com/A",
    "http://example.com/a",
    "https://example.com/a",
    "http://example.com:8080/a",
    "http://example.com/a%2Fb",
    "http://example.com/a/b",
]


def test_dedup_key_keeps_distinct_urls_apart() -> None:
    assert len({crawl_url(u).fingerprint for u in DIFFERENT_KEY}) == len(DIFFERENT_KEY)


def test_tracking_params_kept_on_request() -> None:
    url = "http://example.com/p?utm_source=news&id=7&fbclid=abc"
    assert dedup_key(crawl_url(url).url) == "http://example.com/p?id=7"
    assert dedup_key(crawl_url(url).url, keep_tracking=True) == "http://example.com/p?fbclid=abc&id=7&utm_source=news"
    assert crawl_url(url).fingerprint != crawl_url(url, keep_tracking=True).fingerprint
    assert crawl_url(url).url == url  # the fetch URL never loses them


def test_fetch_url_keeps_the_order_and_drops_the_fragment() -> None:
    got = crawl_url("HTTP://Example.COM:80/a/./b/../c?s=a&p=2#frag")
    assert (got.url, got.host) == ("http://example.com/a/c?s=a&p=2", "example.com")
