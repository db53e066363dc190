"""`crawler.urls`: the fetch URL (as written, WHATWG-parsed), the dedup key (canonical, fingerprint only), links.

Table-driven: each row is an input (optionally with a base) and the exact result expected, or a refusal with a
few words of the reason. The WHATWG conformance table is tests/test_whatwg_urls.py; this file holds the crawler's
own rules. No Redis, no network.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crawler.urls as urls_mod
from crawler.urls import (
    MAX_URL_BYTES,
    InvalidURL,
    LinkResolver,
    crawl_url,
    dedup_key,
    fingerprint,
    host_of,
    resolve,
)

pytestmark = pytest.mark.timeout(30)

# (input, fetch URL, politeness host, dedup key)
FORMS: list[tuple[str, str, str, str]] = [
    ("HTTP://Example.COM/Path/To", "http://example.com/Path/To", "example.com", "http://example.com/Path/To"),
    ("http://example.com./a", "http://example.com./a", "example.com.", "http://example.com/a"),
    ("http://example.com", "http://example.com/", "example.com", "http://example.com/"),
    (
        "http://Bücher.example/",
        "http://xn--bcher-kva.example/",
        "xn--bcher-kva.example",
        "http://xn--bcher-kva.example/",
    ),
    ("http://faß.example/", "http://xn--fa-hia.example/", "xn--fa-hia.example", "http://xn--fa-hia.example/"),  # UTS 46
    ("http://example.com:80/", "http://example.com/", "example.com", "http://example.com/"),
    ("http://example.com:8080/x", "http://example.com:8080/x", "example.com:8080", "http://example.com:8080/x"),
    ("http://example.com/a?x=1#frag", "http://example.com/a?x=1", "example.com", "http://example.com/a?x=1"),
    ("http://example.com/a/./b/../c", "http://example.com/a/c", "example.com", "http://example.com/a/c"),
    ("http://example.com/x/%2E%2E/y", "http://example.com/y", "example.com", "http://example.com/y"),
    # the query is fetched as written; the key sorts it and drops tracking parameters
    ("http://example.com/?s=a&p=2", "http://example.com/?s=a&p=2", "example.com", "http://example.com/?p=2&s=a"),
    (
        "http://e.com/p?utm_source=n&id=7&fbclid=x",
        "http://e.com/p?utm_source=n&id=7&fbclid=x",
        "e.com",
        "http://e.com/p?id=7",
    ),
    ("http://example.com/a?", "http://example.com/a?", "example.com", "http://example.com/a"),
    (
        "http://example.com/?b=1&a=2&a=1",
        "http://example.com/?b=1&a=2&a=1",
        "example.com",
        "http://example.com/?a=2&a=1&b=1",
    ),
    # percent-encoding: WHATWG leaves existing escapes; the key decodes unreserved ones and upper-cases the rest
    ("http://example.com/%7euser", "http://example.com/%7euser", "example.com", "http://example.com/~user"),
    ("http://example.com/%e2%82%ac", "http://example.com/%e2%82%ac", "example.com", "http://example.com/%E2%82%AC"),
    ("http://example.com/a b", "http://example.com/a%20b", "example.com", "http://example.com/a%20b"),
    ("http://example.com/100%", "http://example.com/100%", "example.com", "http://example.com/100%25"),
    # hosts: IPv4 number forms canonicalised, escapes decoded, IPv6 compressed
    ("http://0x7f.0.0.1/", "http://127.0.0.1/", "127.0.0.1", "http://127.0.0.1/"),
    ("http://2130706433/", "http://127.0.0.1/", "127.0.0.1", "http://127.0.0.1/"),
    ("http://127.1:8000/", "http://127.0.0.1:8000/", "127.0.0.1:8000", "http://127.0.0.1:8000/"),
    ("http://exa%6Dple.com/", "http://example.com/", "example.com", "http://example.com/"),
    (
        "http://[2001:DB8:0:0:0:0:0:1]:8080/a",
        "http://[2001:db8::1]:8080/a",
        "[2001:db8::1]:8080",
        "http://[2001:db8::1]:8080/a",
    ),
    # backslashes are slashes, tabs and newlines vanish, surrounding whitespace is trimmed
    ("http://example.com\\a\\b", "http://example.com/a/b", "example.com", "http://example.com/a/b"),
    ("http://exa\tmple.com/a\nb", "http://example.com/ab", "example.com", "http://example.com/ab"),
    ("  http://127.0.0.1:8000/x\n", "http://127.0.0.1:8000/x", "127.0.0.1:8000", "http://127.0.0.1:8000/x"),
]


@pytest.mark.parametrize(("raw", "url", "host", "key"), FORMS, ids=[r[0][:60] for r in FORMS])
def test_fetch_url_and_key(raw: str, url: str, host: str, key: str) -> None:
    got = crawl_url(raw)
    assert (got.url, got.host) == (url, host)
    assert host_of(got.url) == host  # what the Lua scripts compute from the entry
    assert dedup_key(got.url) == key
    assert got.fingerprint == fingerprint(key) == hashlib.blake2b(key.encode(), digest_size=8).digest()
    assert crawl_url(got.url) == got  # the fetch URL is a fixed point


# (input, a fragment of the reason)
REJECTED: list[tuple[str, str]] = [
    ("javascript:alert(1)", "scheme javascript:"),
    ("data:text/html;base64,PGgxPg==", "scheme data:"),
    ("file:///etc/passwd", "scheme file:"),
    ("ftp://example.com/file", "scheme ftp:"),
    ("ws://example.com/socket", "scheme ws:"),
    ("//example.com/no-scheme", "scheme (none)"),
    ("", "scheme (none)"),
    ("http://", "no host"),
    ("http://:8080/", "no host"),
    ("http://example.com:99999/", "port out of range"),
    ("http://example.com:0/", "port out of range"),
    ("http://example.com:8o/", "port out of range"),
    ("http://user:secret@example.com/", "credentials"),
    ("http://user@example.com/", "credentials"),
    ("http://example.com/" + "a" * (MAX_URL_BYTES - 18), "longer than"),
    ("http://example.com/" + "a" * 100_000, "longer than"),
    ("http://exa\x00mple.com/", "host"),
    ("http://exa mple.com/", "host"),
    ("http://1.2.3.08/", "host"),  # an invalid IPv4 number form
    ("http://[::1/", "IPv6"),
    ("http://[zz::1]/", "IPv6"),
    ("http://[::1]x/", "IPv6"),
]


@pytest.mark.parametrize(("raw", "reason"), REJECTED, ids=[repr(r[0][:50]) for r in REJECTED])
def test_rejected(raw: str, reason: str) -> None:
    with pytest.raises(InvalidURL, match=re.escape(reason)):
        crawl_url(raw)


@pytest.mark.parametrize(
    "raw", ["http://user:hunter2@example.com/", "http://user:hunter2@[::zz]/", "http://u:hun@ter2@exa mple.com/"]
)
def test_refused_password_is_not_in_the_message(raw: str) -> None:
    with pytest.raises(InvalidURL) as exc:
        crawl_url(raw)
    assert not any(part in str(exc.value) for part in ("hunter2", "hun", "ter2"))


def test_length_limit_boundary() -> None:
    head = "http://example.com/"
    exact = head + "a" * (MAX_URL_BYTES - len(head))
    assert crawl_url(exact).url == exact
    with pytest.raises(InvalidURL, match="longer than"):
        crawl_url(exact + "a")
    with pytest.raises(InvalidURL, match="longer than"):  # short as characters, long once percent-encoded
        crawl_url(head + "é" * 2000)


# -- links: resolved as a browser does, and never raising ----------------------------------------------------------

BASE = "http://example.com/x/y?z=1"
LINKS: list[tuple[str, str | None]] = [
    ("../c", "http://example.com/c"),
    ("c", "http://example.com/x/c"),
    ("/abs?s=a&p=2#f", "http://example.com/abs?s=a&p=2"),
    ("//Other.Example/p", "http://other.example/p"),
    ("?q=1", "http://example.com/x/y?q=1"),
    ("", "http://example.com/x/y?z=1"),
    ("\\\\other.example\\p", "http://other.example/p"),
    ("/a\n/b\t/c", "http://example.com/a/b/c"),  # an href wrapped over lines
    ("https:host", "https://host/"),
    ("///host/path", "http://host/path"),
    ("#top", None),  # this very page
    ("  #top", None),
    ("javascript:void(0)", None),
    ("mailto:a@example.com", None),
    ("tel:+123", None),
    # malformed: that link only is dropped
    ("HTTP://[oops", None),
    ("FTP://[x", None),
    ("file://[example]/", None),
    ("http://[::1", None),
    ("https://a b/", None),
    ("http://1.2.3.08/", None),
    ("http://user:pw@example.com/", None),
    ("http://example.com:99999/", None),
    ("http://\udc00/", None),
    ("http://exa\udc00mple.com/p", None),
    ("/p\udc00", "http://example.com/p%EF%BF%BD"),  # a lone surrogate is U+FFFD, as in a browser
]


@pytest.mark.parametrize(("href", "expected"), LINKS, ids=[repr(r[0]) for r in LINKS])
def test_link_resolution(href: str, expected: str | None) -> None:
    got = LinkResolver()(href, BASE)
    assert (got.url if got else None) == expected
    if not href.lstrip().startswith("#"):
        assert resolve(href, BASE) == expected


@pytest.mark.parametrize("base", ["HTTP://[oops", "", "not a url", "ftp://x/"])
def test_bad_base_drops_the_link_and_never_raises(base: str) -> None:
    assert LinkResolver()("/a", base) is None
    assert resolve("/a", base) is None


CACHE_BASES = [
    "http://example.com/d1/e",
    "http://example.com/d2/e?q=1",
    "https://example.com/d1/e",
    "http://example.com:8080/d1/e",
    "http://other.example/d1/e",
    "http://example.com",
    "ftp://example.com/d1/",
    "not a base",
]
CACHE_HREFS = ["/p?b=1&a=2", "../up", "?page=3", "http://abs.example/x", "//proto.relative/x", "/\\host/x", "/\t/h/x"]


def test_resolver_cache_answers_like_crawl_url() -> None:
    """Every (href, base) pair twice, over bases that differ in scheme, host, port and path: the cached answer
    is the uncached one, including for a cache so small that it turns over during the test."""
    for size in (4, 100_000):
        r = LinkResolver(size=size)
        for _ in range(2):
            for base in CACHE_BASES:
                for href in CACHE_HREFS:
                    try:  # an absolute link needs no base: a broken base does not drop it
                        want = crawl_url(href, None if href.startswith("http://") else base)
                    except InvalidURL:
                        want = None
                    assert r(href, base) == want, (href, base)
    assert LinkResolver(keep_tracking=True)("/p?utm_source=x", BASE) == crawl_url(
        "/p?utm_source=x", BASE, keep_tracking=True
    )


# -- properties -----------------------------------------------------------------------------------------------------

_path_chars = [*"aZ09-._~!$&'()*+,;=:@/%2EeFf?é |\\^`{}\"<>", "%2e", "%7E", "%41", "/..", "/.", "\t"]


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(["http", "https", "HTTP"]),
    host=st.sampled_from(
        ["example.com", "Example.COM", "bücher.example", "[::1]", "127.0.0.1", "0x7f.1", "a-b.example."]
    ),
    port=st.sampled_from(["", ":80", ":443", ":8080", ":08080"]),
    path=st.lists(st.sampled_from(_path_chars), max_size=10).map("".join),
    query=st.none() | st.lists(st.sampled_from([*_path_chars, "&", "=", "utm_x=1", "%26"]), max_size=10).map("".join),
)
def test_forms_are_fixed_points(scheme: str, host: str, port: str, path: str, query: str | None) -> None:
    raw = f"{scheme}://{host}{port}/{path}" + ("" if query is None else f"?{query}")
    try:
        got = crawl_url(raw)
    except InvalidURL:
        return
    assert crawl_url(got.url) == got  # the fetch URL parses to itself, same host, same fingerprint
    assert " " not in got.url and "#" not in got.url and "\n" not in got.url and got.url.isascii()
    assert host_of(got.url) == got.host
    key = dedup_key(got.url)
    assert dedup_key(crawl_url(key).url) == key  # the key is canonical: parsing it again changes nothing


_label = st.text("abcxyz019-", min_size=1, max_size=6)
_fast_chars = st.text("aZ09-._~!$&'()*+,;=:@/%?#é[]|^ ", max_size=12)


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(["http", "https"]),
    labels=st.lists(_label, min_size=1, max_size=3),
    port=st.sampled_from(["", ":1", ":80", ":443", ":8080", ":08080", ":65535", ":65536", ":99999"]),
    path=_fast_chars,
    query=st.none() | _fast_chars,
)
def test_fast_path_agrees_with_the_full_parser(
    scheme: str, labels: list[str], port: str, path: str, query: str | None
) -> None:
    """Seeds that look already serialised skip ada; whenever they do, ada would have said exactly the same."""
    raw = f"{scheme}://{'.'.join(labels)}{port}/{path}" + ("" if query is None else f"?{query}")
    fast = urls_mod._fast(raw)
    if fast is None:
        return
    href = urls_mod._parse(raw, None)
    assert fast == (href, host_of(href))
    got = crawl_url(raw)
    assert got.fingerprint == fingerprint(dedup_key(got.url))  # the fast key is the key
