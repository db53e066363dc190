"""Sitemap parsing: exact expansion of a 120,000-URL index with bounded memory, hostile XML refused, the
cross-host rule, the protocol's limits, malformed input, text sitemaps and every compression layer."""

from __future__ import annotations

import gzip
import pickle
import tracemalloc
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler.parse import ParseTask, parse_page
from crawler.sitemaps import (
    ERROR_ENTITY,
    ERROR_MALFORMED,
    ERROR_TOO_LARGE,
    ERROR_TOO_MANY,
    SitemapEntry,
    SitemapResult,
    parse_sitemap,
)

NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
SITE = "https://shop.test"


def urlset(locs: list[str], extra: str = "") -> bytes:
    body = "".join(f"<url><loc>{loc}</loc><lastmod>2026-11-30</lastmod><priority>0.8</priority></url>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="{NS}">{body}{extra}</urlset>\n'.encode()


def index(locs: list[str]) -> bytes:
    body = "".join(f"<sitemap><loc>{loc}</loc><lastmod>2026-11-30</lastmod></sitemap>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<sitemapindex xmlns="{NS}">{body}</sitemapindex>'.encode()


def product_urls(part: int, n: int) -> list[str]:
    return [f"{SITE}/p/{part}/{i}?colour=red&amp;size={i % 7}" for i in range(n)]


def test_index_of_three_gzipped_sitemaps_expands_to_exactly_120000_urls() -> None:
    children = [f"{SITE}/sitemaps/products-{k}.xml.gz" for k in range(3)]
    top = parse_sitemap(index(children), None, f"{SITE}/sitemap_index.xml")
    assert top == SitemapResult(sitemaps=tuple(children), is_index=True)

    files = {url: gzip.compress(urlset(product_urls(k, 40_000)), 6) for k, url in enumerate(top.sitemaps)}
    seen: list[str] = []
    for url, body in files.items():
        result = parse_sitemap(body, None, url)  # .xml.gz served without a content encoding: found by its magic
        assert (result.error, result.refused, result.invalid, result.is_index) == (None, 0, 0, False)
        assert len(result.urls) == 40_000
        seen += [e.loc for e in result.urls]
    expected = {u.replace("&amp;", "&") for k in range(3) for u in product_urls(k, 40_000)}
    assert len(seen) == len(set(seen)) == 120_000
    assert set(seen) == expected
    assert result.urls[-1] == SitemapEntry(product_urls(2, 40_000)[-1].replace("&amp;", "&"), "2026-11-30", 0.8)


def test_one_40k_url_file_is_parsed_without_holding_the_document() -> None:
    """Transient memory (peak minus the result kept) stays far below the decompressed document's size."""
    xml = urlset(product_urls(0, 40_000))
    body = gzip.compress(xml, 6)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = parse_sitemap(body, "gzip", f"{SITE}/sitemap.xml")
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.urls) == 40_000
    transient = peak - kept
    print(
        f"document {len(xml) / 1e6:.1f} MB, result {(kept - before) / 1e6:.1f} MB, transient {transient / 1e6:.2f} MB"
    )
    assert transient < len(xml) / 4
    assert transient < 2_000_000


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>https://shop.test/&lol9;</loc></url></urlset>
"""


def test_billion_laughs_is_refused() -> None:
    result = parse_sitemap(BILLION_LAUGHS, None, f"{SITE}/sitemap.xml")
    assert result.error is not None and result.error.startswith(ERROR_ENTITY)
    assert result.urls == ()


def test_xxe_is_refused_and_the_file_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    documents = [
        f'<!DOCTYPE urlset [<!ENTITY xxe SYSTEM "file://{secret}">]><urlset><url><loc>&xxe;</loc></url></urlset>',
        f'<!DOCTYPE urlset SYSTEM "file://{secret}"><urlset><url><loc>{SITE}/a</loc></url></urlset>',
        f'<!DOCTYPE urlset [<!ENTITY % p SYSTEM "file://{secret}"> %p;]><urlset/>',
        f'<?xml version="1.0"?>\n<!DOCTYPE urlset><urlset><url><loc>{SITE}/a</loc></url></urlset>',
    ]
    for doc in documents:
        for body, enc in ((doc.encode(), None), (gzip.compress(doc.encode()), "gzip")):
            result = parse_sitemap(body, enc, f"{SITE}/sitemap.xml")
            assert result.error is not None and result.error.startswith(ERROR_ENTITY), doc
            assert result.urls == ()
            assert "TOP-SECRET" not in repr(result)


def test_predefined_entities_and_character_references_still_work() -> None:
    result = parse_sitemap(urlset([f"{SITE}/a?b=1&amp;c=&#x32;&apos;"]), None, f"{SITE}/sitemap.xml")
    assert [e.loc for e in result.urls] == [f"{SITE}/a?b=1&c=2'"]


def test_urls_on_another_host_are_refused_unless_allowed() -> None:
    locs = [f"{SITE}/own", "https://other.test/x", "https://cdn.shop.test/y", "https://www.partner.test/z"]
    locs += ["https://evilpartner.test/w", "HTTPS://SHOP.TEST/upper"]
    result = parse_sitemap(urlset(locs), None, f"{SITE}/sitemap.xml")
    assert [e.loc for e in result.urls] == [f"{SITE}/own", "HTTPS://SHOP.TEST/upper"]
    assert result.refused == 4

    allowed = parse_sitemap(urlset(locs), None, f"{SITE}/sitemap.xml", allowed_domains=("partner.test", "shop.test"))
    assert [e.loc for e in allowed.urls] == [f"{SITE}/own", "https://cdn.shop.test/y", "https://www.partner.test/z",
                                             "HTTPS://SHOP.TEST/upper"]  # fmt: skip
    assert allowed.refused == 2

    children = parse_sitemap(index([f"{SITE}/s1.xml", "https://other.test/s2.xml"]), None, f"{SITE}/index.xml")
    assert (children.sitemaps, children.refused) == ((f"{SITE}/s1.xml",), 1)


def test_a_sitemap_another_host_s_robots_txt_names_speaks_for_that_host() -> None:
    """Cross-submission: robots.txt of shop.test names cdn.test/s.xml; its URLs must be on shop.test, its child
    sitemaps (an index's) on cdn.test, where the index is."""
    locs = [f"{SITE}/own", "https://cdn.test/on-the-cdn", "https://other.test/x"]
    result = parse_sitemap(urlset(locs), None, "https://cdn.test/s.xml", for_host="shop.test:443")
    assert ([e.loc for e in result.urls], result.refused) == ([f"{SITE}/own"], 2)
    children = ["https://cdn.test/s1.xml", f"{SITE}/s2.xml"]
    result = parse_sitemap(index(children), None, "https://cdn.test/i.xml", for_host="shop.test")
    assert (result.sitemaps, result.refused) == (("https://cdn.test/s1.xml",), 1)


def test_the_host_rule_reads_a_loc_as_the_fetcher_will() -> None:
    """WHATWG reads a backslash as a slash: `http://evil.test\\@shop.test/a` is fetched from evil.test (urlsplit
    saw shop.test and let it through). What WHATWG reads as credentials (a tab is stripped first) is invalid."""
    tricks = ["http://evil.test\\@shop.test/a", "http://evil.test\\.shop.test/d", "http://evil.test?@shop.test/e"]
    for kind in (urlset, index):  # pages and child sitemaps alike
        result = parse_sitemap(kind(tricks), None, f"{SITE}/sitemap.xml")
        assert (result.urls, result.sitemaps, result.refused) == ((), (), 3)
    creds = ["http://evil.test\t@shop.test/c", "http://user@shop.test/f", "http://shop.test%5C@x/g"]
    result = parse_sitemap(urlset(creds), None, f"{SITE}/sitemap.xml")
    assert (result.urls, result.invalid) == ((), 3)


def test_more_than_max_urls_keeps_the_first_ones_and_records_the_error() -> None:
    result = parse_sitemap(gzip.compress(urlset(product_urls(0, 50_001))), None, f"{SITE}/sitemap.xml.gz")
    assert result.error is not None and result.error.startswith(ERROR_TOO_MANY)
    assert len(result.urls) == 50_000
    assert result.urls[-1].loc == product_urls(0, 50_000)[-1].replace("&amp;", "&")
    small = parse_sitemap(index([f"{SITE}/{i}.xml" for i in range(5)]), None, f"{SITE}/i.xml", max_urls=3)
    assert small.error is not None and small.error.startswith(ERROR_TOO_MANY)
    assert len(small.sitemaps) == 3


def test_gzip_bomb_stops_at_the_decompressed_cap() -> None:
    bomb = gzip.compress(urlset([]).replace(b"</urlset>", b" " * (60 * 1024 * 1024) + b"</urlset>"), 9)
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    try:
        result = parse_sitemap(bomb, "gzip", f"{SITE}/sitemap.xml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.error is not None and result.error.startswith(ERROR_TOO_LARGE)
    assert peak < 5_000_000
    plain = parse_sitemap(urlset(product_urls(0, 1000)), None, f"{SITE}/sitemap.xml", max_bytes=50_000)
    assert plain.error is not None and plain.error.startswith(ERROR_TOO_LARGE)
    assert 0 < len(plain.urls) < 1000  # the entries before the cap are kept


def test_malformed_xml_is_a_sitemap_error_keeping_the_complete_entries() -> None:
    whole = urlset([f"{SITE}/a", f"{SITE}/b", f"{SITE}/c"])
    cut = whole[: whole.index(b"/b</loc>") + 3]
    result = parse_sitemap(cut, None, f"{SITE}/sitemap.xml")
    assert result.error is not None and result.error.startswith(ERROR_MALFORMED + ": ")
    assert [e.loc for e in result.urls] == [f"{SITE}/a"]
    bad = [
        b"<urlset><url><loc>x</url></urlset>",  # mismatched tag
        b"<html><body>not a sitemap</body></html>",  # wrong root
        b"<urlset><url><loc>" + SITE.encode() + b"/a</loc></url></urlset><urlset/>",  # junk after the document
        b"<?xml version='1.0' encoding='x-unknown'?><urlset/>",
        b"\x1f\x8b\x08\x00garbage-gzip",
        b"   \n",
    ]
    for body in bad:
        result = parse_sitemap(body, None, f"{SITE}/sitemap.xml")
        assert result.error is not None and result.error.startswith(ERROR_MALFORMED), body
    corrupt = bytearray(gzip.compress(whole))
    corrupt[len(corrupt) // 2] ^= 0xFF
    broken = parse_sitemap(bytes(corrupt), "gzip", f"{SITE}/sitemap.xml")
    assert broken.error is not None and broken.error.startswith(ERROR_MALFORMED)


def test_foreign_elements_and_namespaces_do_not_leak_into_entries() -> None:
    extra = (
        '<url xmlns:image="http://www.google.com/schemas/sitemap-image/1.1"><loc>https://shop.test/img-page</loc>'
        "<image:image><image:loc>https://shop.test/i.jpg</image:loc></image:image>"
        "<lastmod>not checked</lastmod><priority>7</priority></url>"
        "<url><priority>0.3</priority></url>"  # no loc: invalid
        "<url><loc>mailto:a@shop.test</loc></url>"  # not http(s): invalid
        f"<url><loc>{SITE}/{'x' * 2100}</loc></url>"  # over the protocol's URL length: invalid
    )
    result = parse_sitemap(urlset([f"{SITE}/a"], extra), None, f"{SITE}/sitemap.xml")
    assert result.urls == (
        SitemapEntry(f"{SITE}/a", "2026-11-30", 0.8),
        SitemapEntry(f"{SITE}/img-page", "not checked", None),
    )
    assert result.invalid == 3
    no_ns = parse_sitemap(b"<urlset><url><loc>https://shop.test/n</loc></url></urlset>", None, f"{SITE}/s.xml")
    assert [e.loc for e in no_ns.urls] == [f"{SITE}/n"]


def test_text_sitemap_one_url_per_line() -> None:
    text = f"\ufeff{SITE}/1\r\n\r\n  {SITE}/2  \nhttps://other.test/3\nnot a url\n{SITE}/{'é' * 3}\n{SITE}/last"
    for body, enc in (
        (text.encode(), None),
        (gzip.compress(text.encode()), None),
        (brotli.compress(text.encode()), "br"),
    ):
        result = parse_sitemap(body, enc, f"{SITE}/sitemap.txt")
        assert [e.loc for e in result.urls] == [f"{SITE}/1", f"{SITE}/2", f"{SITE}/ééé", f"{SITE}/last"]
        assert (result.refused, result.invalid, result.error) == (1, 1, None)
    endless = parse_sitemap(f"{SITE}/a\n".encode() + b"x" * 300_000 + f"\n{SITE}/b".encode(), None, f"{SITE}/s.txt")
    assert [e.loc for e in endless.urls] == [f"{SITE}/a", f"{SITE}/b"]
    assert endless.invalid >= 1


def test_every_compression_layer() -> None:
    xml = urlset(product_urls(1, 500))
    expected = parse_sitemap(xml, None, f"{SITE}/sitemap.xml")
    deflate = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    encoded = {
        "gzip": (gzip.compress(xml), "gzip"),
        "x-gzip": (gzip.compress(xml), "x-gzip"),
        "deflate": (deflate.compress(xml) + deflate.flush(), "deflate"),
        "br": (brotli.compress(xml), "br"),
        "gzip twice (.xml.gz served gzip'd)": (gzip.compress(gzip.compress(xml)), "gzip"),
        "two gzip members": (gzip.compress(xml[:5000]) + gzip.compress(xml[5000:]), "gzip"),
        "identity": (xml, "identity"),
    }
    for name, (body, enc) in encoded.items():
        assert parse_sitemap(body, enc, f"{SITE}/sitemap.xml") == expected, name
    assert len(expected.urls) == 500
    unknown = parse_sitemap(xml, "zstd", f"{SITE}/sitemap.xml")
    assert unknown.error is not None and unknown.error.startswith(ERROR_MALFORMED)


def test_runs_in_a_process_pool() -> None:
    body = gzip.compress(urlset(product_urls(2, 100)))
    with ProcessPoolExecutor(max_workers=1) as pool:
        result = pool.submit(parse_sitemap, body, "gzip", f"{SITE}/sitemap.xml").result(timeout=60)
    assert result == parse_sitemap(body, "gzip", f"{SITE}/sitemap.xml")
    assert pickle.loads(pickle.dumps(result)) == result


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([None, "gzip", "br", "deflate", ""]))
def test_never_raises_on_arbitrary_bytes(body: bytes, enc: str | None) -> None:
    result = parse_sitemap(body, enc, f"{SITE}/sitemap.xml")
    assert isinstance(result, SitemapResult)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**9), max_size=50), st.integers(1, 400))
def test_any_cut_of_a_valid_sitemap_keeps_a_prefix(ids: list[int], cut: int) -> None:
    locs = [f"{SITE}/{i}" for i in ids]
    xml = urlset(locs)
    result = parse_sitemap(xml[: len(xml) - cut], None, f"{SITE}/sitemap.xml")
    got = [e.loc for e in result.urls]
    assert got == locs[: len(got)]
    assert result.error is None or result.error.startswith(ERROR_MALFORMED)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_sitemap_cut_at_its_cap_expands_the_entries_before_the_cut_and_says_it_was_too_large(compress: bool) -> None:
    """The fetcher returns a sitemap past 50 MiB cut (`truncated`); the parse keeps every whole entry before the
    cut and records the overflow as `too large`, not as the malformed XML the cut leaves."""
    locs = [f"{SITE}/p/{i}" for i in range(2000)]
    full = gzip.compress(urlset(locs)) if compress else urlset(locs)
    body = full[: len(full) // 2]
    task = ParseTask(body=body, url=f"{SITE}/s.xml", final_url=f"{SITE}/s.xml", kind="sitemap", truncated=True)
    page = parse_page(task)
    got = [r.url for r in page.requests]
    assert 500 < len(got) < 2000 and got == locs[: len(got)]
    assert page.error == "sitemap_error" and page.parser_error_detail is not None
    assert page.parser_error_detail.startswith(f"{ERROR_TOO_LARGE}: the file passed {len(body)} bytes")
    whole = parse_page(ParseTask(body=full, url=task.url, final_url=task.url, kind="sitemap"))
    assert (len(whole.requests), whole.error) == (2000, None)


def test_rss_and_atom_feeds_are_sitemaps_too() -> None:
    """sitemaps.org accepts RSS 2.0 and Atom 1.0 feeds: each item's or entry's link is a URL, its publication or
    update time its lastmod (RSS's RFC 822 date as a W3C datetime); the channel's own link is not an entry."""
    rss = f"""<?xml version="1.0"?><rss version="2.0"><channel><title>News</title><link>{SITE}/</link>
      <item><title>One</title><link> {SITE}/news/1 </link><pubDate>Tue, 01 Dec 2026 10:00:00 GMT</pubDate></item>
      <item><link>{SITE}/news/2</link><pubDate>not a date</pubDate></item>
      <item><link>https://other.test/news/3</link></item>
    </channel></rss>""".encode()
    result = parse_sitemap(rss, None, f"{SITE}/feed.rss")
    assert result.error is None and not result.is_index
    assert result.urls == (
        SitemapEntry(f"{SITE}/news/1", "2026-12-01T10:00:00+00:00"),
        SitemapEntry(f"{SITE}/news/2"),
    )
    assert result.refused == 1
    atom = f"""<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">
      <title>Blog</title><link href="{SITE}/"/><updated>2026-12-01T09:00:00Z</updated>
      <entry><title>A</title><link rel="replies" href="{SITE}/a#comments"/><link href="{SITE}/a"/>
        <updated>2026-11-30T08:00:00Z</updated></entry>
      <entry><link rel="alternate" type="text/html" href="{SITE}/b"/></entry>
      <entry><link rel="enclosure" href="{SITE}/b.mp3"/></entry>
    </feed>""".encode()
    result = parse_sitemap(gzip.compress(atom), None, f"{SITE}/atom.xml.gz")
    assert result.error is None
    assert result.urls == (SitemapEntry(f"{SITE}/a", "2026-11-30T08:00:00Z"), SitemapEntry(f"{SITE}/b"))
    assert result.invalid == 1  # the entry with only an enclosure has no page
    assert parse_sitemap(b"<html><body>no</body></html>", None, f"{SITE}/x").error == (
        f"{ERROR_MALFORMED}: root element <html> is not urlset, sitemapindex, rss or feed"
    )
