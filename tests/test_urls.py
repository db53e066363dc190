"""`crawler.urls.normalize`: the one normal form every URL takes before dedup.

Table-driven: each row is an input (optionally with a base) and the exact normal form expected, or a rejection
with a few words of the reason. No Redis, no network.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler.urls import MAX_URL_BYTES, InvalidURL, LinkNormalizer, fingerprint, host_of, normalize, origin_of

pytestmark = pytest.mark.timeout(30)

# (input, expected normal form, expected politeness host)
NORMAL_FORMS: list[tuple[str, str, str]] = [
    # scheme and host case; the path keeps its case
    ("HTTP://Example.COM/Path/To", "http://example.com/Path/To", "example.com"),
    ("hTtPs://WWW.Example.org/", "https://www.example.org/", "www.example.org"),
    ("http://example.com./a", "http://example.com/a", "example.com"),  # trailing root dot
    # empty path becomes "/"
    ("http://example.com", "http://example.com/", "example.com"),
    ("http://example.com?b=1", "http://example.com/?b=1", "example.com"),
    # IDN host -> punycode
    ("http://Bücher.example/", "http://xn--bcher-kva.example/", "xn--bcher-kva.example"),
    ("https://münchen.de/straße", "https://xn--mnchen-3ya.de/stra%C3%9Fe", "xn--mnchen-3ya.de"),
    # default port dropped, others kept (and part of the politeness host)
    ("http://example.com:80/", "http://example.com/", "example.com"),
    ("https://example.com:443/", "https://example.com/", "example.com"),
    ("http://example.com:443/", "http://example.com:443/", "example.com:443"),
    ("https://example.com:80/", "https://example.com:80/", "example.com:80"),
    ("http://example.com:8080/x", "http://example.com:8080/x", "example.com:8080"),
    ("http://example.com:65535/", "http://example.com:65535/", "example.com:65535"),
    ("http://example.com:/", "http://example.com/", "example.com"),  # empty port
    # fragment dropped
    ("http://example.com/a#frag", "http://example.com/a", "example.com"),
    ("http://example.com/a?x=1#frag?y=2", "http://example.com/a?x=1", "example.com"),
    # dot segments
    ("http://example.com/a/./b/../c", "http://example.com/a/c", "example.com"),
    ("http://example.com/a/b/..", "http://example.com/a/", "example.com"),
    ("http://example.com/a/b/.", "http://example.com/a/b/", "example.com"),
    ("http://example.com/../../a", "http://example.com/a", "example.com"),
    ("http://example.com/a/.hidden/..x", "http://example.com/a/.hidden/..x", "example.com"),
    # percent-encoding: unreserved decoded, other escapes upper-cased, unsafe bytes encoded as UTF-8
    ("http://example.com/%7euser", "http://example.com/~user", "example.com"),
    ("http://example.com/%41%62%2d%5F%2E", "http://example.com/Ab-_.", "example.com"),
    ("http://example.com/%e2%82%ac", "http://example.com/%E2%82%AC", "example.com"),
    ("http://example.com/a%2fb", "http://example.com/a%2Fb", "example.com"),  # reserved stays encoded
    ("http://example.com/a b", "http://example.com/a%20b", "example.com"),
    ("http://example.com/é", "http://example.com/%C3%A9", "example.com"),
    ("http://example.com/100%", "http://example.com/100%25", "example.com"),
    ("http://example.com/%zz", "http://example.com/%25zz", "example.com"),
    ("http://example.com/?q=%7e%2f%20", "http://example.com/?q=~%2F%20", "example.com"),
    ("http://example.com/?q=a b&r=é", "http://example.com/?q=a%20b&r=%C3%A9", "example.com"),
    # empty query dropped
    ("http://example.com/a?", "http://example.com/a", "example.com"),
    ("http://example.com/a?&&", "http://example.com/a", "example.com"),
    ("http://example.com/a?#f", "http://example.com/a", "example.com"),
    # query params stably sorted by key; repeated keys keep their relative order; empty pairs dropped
    ("http://example.com/?b=2&a=1", "http://example.com/?a=1&b=2", "example.com"),
    ("http://example.com/?b=1&a=2&c=3&a=1", "http://example.com/?a=2&a=1&b=1&c=3", "example.com"),
    ("http://example.com/?a=1&a=2", "http://example.com/?a=1&a=2", "example.com"),
    ("http://example.com/?a=2&a=1", "http://example.com/?a=2&a=1", "example.com"),
    ("http://example.com/?z&y=&x=0", "http://example.com/?x=0&y=&z", "example.com"),
    ("http://example.com/?b=1&&a=2&", "http://example.com/?a=2&b=1", "example.com"),
    # tracking parameters dropped by default
    ("http://example.com/p?utm_source=news&id=7&utm_medium=mail", "http://example.com/p?id=7", "example.com"),
    ("http://example.com/p?fbclid=abc&gclid=def", "http://example.com/p", "example.com"),
    ("http://example.com/p?UTM_Campaign=x&b=1&msclkid=2", "http://example.com/p?b=1", "example.com"),
    ("http://example.com/p?utm=keep&xutm_source=keep", "http://example.com/p?utm=keep&xutm_source=keep", "example.com"),
    # IPv6 literals
    ("http://[2001:DB8:0:0:0:0:0:1]:8080/a", "http://[2001:db8::1]:8080/a", "[2001:db8::1]:8080"),
    ("http://[::1]:80/", "http://[::1]/", "[::1]"),
    ("https://[::FFFF:10.0.0.1]/x", "https://[::ffff:a00:1]/x", "[::ffff:a00:1]"),
    # IPv4 and surrounding whitespace
    ("  http://127.0.0.1:8000/x\n", "http://127.0.0.1:8000/x", "127.0.0.1:8000"),
]


@pytest.mark.parametrize(("raw", "expected", "host"), NORMAL_FORMS, ids=[r[0][:60] for r in NORMAL_FORMS])
def test_normal_form(raw: str, expected: str, host: str) -> None:
    n = normalize(raw)
    assert n.url == expected
    assert n.host == host
    assert host_of(n.url) == host  # what the Lua scripts compute from the entry
    assert " " not in n.url  # Lua splits entries on spaces
    # the normal form is a fixed point
    assert normalize(n.url).url == n.url


TRACKING = "http://example.com/p?utm_source=news&id=7&fbclid=abc&gclid=def&utm_medium=mail"


def test_tracking_params_kept_on_request() -> None:
    kept = normalize(TRACKING, keep_tracking=True)
    assert kept.url == "http://example.com/p?fbclid=abc&gclid=def&id=7&utm_medium=mail&utm_source=news"
    dropped = normalize(TRACKING)
    assert dropped.url == "http://example.com/p?id=7"
    assert kept.fingerprint != dropped.fingerprint


# (url, base, expected)
RELATIVE: list[tuple[str, str, str]] = [
    ("../c", "http://example.com/x/y/z", "http://example.com/x/c"),
    ("c", "http://example.com/x/y/z", "http://example.com/x/y/c"),
    ("/abs?b=2&a=1#f", "http://example.com/x/y", "http://example.com/abs?a=1&b=2"),
    ("//Other.Example/p", "https://example.com/x", "https://other.example/p"),
    ("?q=1", "http://example.com/x/y", "http://example.com/x/y?q=1"),
    ("./", "http://example.com/x/y", "http://example.com/x/"),
    ("", "http://example.com/x/y?z=1#f", "http://example.com/x/y?z=1"),
    ("HTTPS://Abs.Example:443/", "http://example.com/", "https://abs.example/"),
    ("../../../../d", "http://example.com/a/b", "http://example.com/d"),
]


@pytest.mark.parametrize(("url", "base", "expected"), RELATIVE)
def test_relative_resolution(url: str, base: str, expected: str) -> None:
    assert normalize(url, base).url == expected


@pytest.mark.parametrize(
    "link",
    ["javascript:void(0)", "mailto:a@example.com", "data:text/html,hi", "tel:+123", "#top", "ftp://example.com/f"],
)
def test_relative_non_http_links_rejected(link: str) -> None:
    with pytest.raises(InvalidURL):
        normalize(link, "http://example.com/page")


# (input, a fragment of the reason)
REJECTED: list[tuple[str, str]] = [
    ("javascript:alert(1)", "scheme"),
    ("JavaScript:alert(1)", "scheme"),
    ("data:text/html;base64,PGgxPg==", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("mailto:someone@example.com", "scheme"),
    ("ftp://example.com/file", "scheme"),
    ("ws://example.com/socket", "scheme"),
    ("//example.com/no-scheme", "scheme"),
    ("example.com/no-scheme", "scheme"),
    ("", "scheme"),
    ("http:///only-path", "no host"),
    ("http://:8080/", "no host"),
    ("http:example.com", "no host"),
    ("http://./", "no host"),
    ("http://example.com:99999/", "port"),
    ("http://example.com:65536/", "port"),
    ("http://example.com:0/", "port"),
    ("http://example.com:-1/", "port"),
    ("http://example.com:8o/", "port"),
    ("http://user:secret@example.com/", "credentials"),
    ("http://user@example.com/", "credentials"),
    ("http://:pw@example.com/", "credentials"),
    ("http://example.com/" + "a" * (MAX_URL_BYTES - 18), "longer than"),  # 8193 characters
    ("http://example.com/" + "a" * 100_000, "longer than"),
    ("http://example.com/\x00x", "control"),
    ("http://exa\x00mple.com/", "control"),
    ("http://example.com/a\tb", "control"),
    ("http://example.com/a\rb", "control"),
    ("http://example.com/a\nb", "control"),
    ("http://exa mple.com/", "host"),
    ("http://a..example.com/", "host"),
    ("http://exa%6Dple.com/", "host"),
    ("http://[::1/", "IPv6"),
    ("http://[zz::1]/", "IPv6"),
]


@pytest.mark.parametrize(("raw", "reason"), REJECTED, ids=[repr(r[0][:50]) for r in REJECTED])
def test_rejected(raw: str, reason: str) -> None:
    with pytest.raises(InvalidURL, match=reason):
        normalize(raw)


def test_length_limit_boundary() -> None:
    head = "http://example.com/"
    exact = head + "a" * (MAX_URL_BYTES - len(head))
    assert len(exact) == MAX_URL_BYTES
    assert normalize(exact).url == exact
    with pytest.raises(InvalidURL, match="longer than"):
        normalize(exact + "a")
    # under the limit as characters, over it once percent-encoded: refused on the normal form's length
    with pytest.raises(InvalidURL, match="longer than"):
        normalize(head + "é" * 2000)


# C0 controls and DEL inside a URL are refused (at the edges, whitespace is stripped first).
CONTROLS_REFUSED = ["\x00", "\t", "\r", "\n"]
CONTROLS_OTHER = ["\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f"]


@pytest.mark.parametrize("c", CONTROLS_REFUSED, ids=[f"0x{ord(c):02x}" for c in CONTROLS_REFUSED])
def test_control_characters_refused(c: str) -> None:
    for url in (f"http://example.com/a{c}b", f"http://example.com/?q=a{c}b", f"http://exa{c}mple.com/"):
        with pytest.raises(InvalidURL):
            normalize(url)


@pytest.mark.parametrize("c", CONTROLS_OTHER, ids=[f"0x{ord(c):02x}" for c in CONTROLS_OTHER])
def test_other_control_characters_refused(c: str) -> None:
    with pytest.raises(InvalidURL):
        normalize(f"http://example.com/a{c}b")


# -- fingerprints ----------------------------------------------------------------------------------------------

EQUIVALENT: list[list[str]] = [
    [
        "http://example.com/a/b?x=1&y=2",
        "HTTP://EXAMPLE.COM:80/a/./c/../b?y=2&x=1#frag",
        "http://example.com/a/b?y=2&utm_source=z&x=1",
        "http://Example.com./a/%62?x=1&y=2&",
        "  http://example.com/a/b?x=1&y=2\n",
    ],
    ["https://xn--bcher-kva.example/", "https://BÜCHER.example:443", "https://bücher.example/#x"],
    ["http://[::1]:8080/%7e", "http://[0:0:0:0:0:0:0:1]:8080/~", "http://[::1]:8080/%7E"],
    ["http://example.com/%C3%A9", "http://example.com/é", "http://example.com/%c3%a9"],
]


@pytest.mark.parametrize("group", EQUIVALENT, ids=[g[0] for g in EQUIVALENT])
def test_fingerprints_equal_for_equivalent_urls(group: list[str]) -> None:
    normals = [normalize(u) for u in group]
    assert {n.url for n in normals} == {normals[0].url}
    assert {n.fingerprint for n in normals} == {normals[0].fingerprint}
    for n in normals:
        assert isinstance(n.fingerprint, bytes)
        assert len(n.fingerprint) == 8
        assert n.fingerprint == fingerprint(n.url) == hashlib.blake2b(n.url.encode(), digest_size=8).digest()


def test_fingerprints_differ_for_different_urls() -> None:
    urls = [
        "http://example.com/",
        "https://example.com/",
        "http://example.com:8080/",
        "http://example.com/A",
        "http://example.com/a",
        "http://example.com/?a=1&a=2",
        "http://example.com/?a=2&a=1",
        "http://example.com/a%2Fb",
        "http://example.com/a/b",
    ]
    fps = {normalize(u).fingerprint for u in urls}
    assert len(fps) == len(urls)


# -- equivalent URLs get one normal form, and the normal form is a fixed point -----------------------------------

PCT_DOT_SEGMENTS = [
    ("http://example.com/x/%2E%2E/y", "http://example.com/y"),
    ("http://example.com/x/%2e/y", "http://example.com/x/y"),
    ("http://example.com/.%2E/etc", "http://example.com/etc"),
]


@pytest.mark.parametrize(("raw", "expected"), PCT_DOT_SEGMENTS)
def test_percent_encoded_dot_segments_resolved(raw: str, expected: str) -> None:
    n = normalize(raw)
    assert n.url == expected
    assert normalize(n.url).url == n.url


QUERY_SORT_EQUIVALENTS = [
    ("http://example.com/?a=1&%7E=2", "http://example.com/?a=1&~=2"),
    ("http://example.com/?%c3%a9=1&%D0%96=2", "http://example.com/?%C3%A9=1&%D0%96=2"),
    ("http://example.com/?utm%5Fsource=x&a=1", "http://example.com/?a=1"),
]


@pytest.mark.parametrize(("raw", "equivalent"), QUERY_SORT_EQUIVALENTS)
def test_query_sorted_after_percent_normalisation(raw: str, equivalent: str) -> None:
    n = normalize(raw)
    assert n.url == normalize(equivalent).url
    assert normalize(n.url).url == n.url


# RFC 3986 section 5.2 (and WHATWG) resolution of references that Python's urljoin gets wrong.
RFC_RELATIVE = [
    (";", "http://example.com/x/", "http://example.com/x/;"),
    ("2//", "http://example.com/x/", "http://example.com/x/2//"),
    ("a//b", "http://example.com/x/y", "http://example.com/x/a//b"),
]


@pytest.mark.parametrize(("href", "base", "expected"), RFC_RELATIVE)
def test_relative_resolution_follows_rfc3986(href: str, base: str, expected: str) -> None:
    assert normalize(href, base).url == expected


@pytest.mark.parametrize(("href", "base", "expected"), RFC_RELATIVE)
def test_link_normalizer_follows_rfc3986(href: str, base: str, expected: str) -> None:
    got = LinkNormalizer()(href, base, origin_of(base))
    assert got is not None and got.url == expected


# -- properties -----------------------------------------------------------------------------------------------

_path_chars = [*"aZ09-._~!$&'()*+,;=:@/%2EeFf?é ", "%2e", "%7E", "%41", "/..", "/."]


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.sampled_from(["example.com", "Example.COM", "bücher.example", "[::1]", "127.0.0.1", "a-b.example."]),
    port=st.sampled_from(["", ":80", ":443", ":8080", ":08080"]),
    path=st.lists(st.sampled_from(_path_chars), max_size=10).map("".join),
    query=st.none() | st.lists(st.sampled_from([*_path_chars, "&", "=", "utm_x=1", "%26"]), max_size=10).map("".join),
)
def test_normal_form_is_a_fixed_point(scheme: str, host: str, port: str, path: str, query: str | None) -> None:
    raw = f"{scheme}://{host}{port}/{path}" + ("" if query is None else f"?{query}")
    try:
        n = normalize(raw)
    except InvalidURL:
        return
    assert normalize(n.url) == n  # idempotent, same fingerprint
    assert normalize(scheme.upper() + raw[len(scheme) :]) == n  # scheme case never matters
    assert " " not in n.url and "#" not in n.url
    assert host_of(n.url) == n.host
