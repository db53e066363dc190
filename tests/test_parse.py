"""The parse function runs in the pool: bytes in, ParsedPage out, never an exception."""

from __future__ import annotations

import gzip
import pickle
import zlib

import brotli
import pytest

from crawler.parse import ParseTask, parse_page
from crawler.settings import ExtractRule

BASE = "http://example.com/dir/page"


def task(body: bytes, **kw: object) -> ParseTask:
    return ParseTask(body=body, url=BASE, final_url=BASE, **kw)  # type: ignore[arg-type]


def test_title_links_meta_canonical_and_scope() -> None:
    html = b"""<html><head><title>  Hello
      World </title><meta name="ROBOTS" content="NOINDEX"><link rel="canonical" href="/canon#x"></head>
      <body><p>text</p>
      <a href="a">rel</a> <a href="/b?z=1&amp;a=2#f">abs</a> <a href="/b?a=2&z=1">dup</a>
      <a href="https://other.org/x">off</a> <a href="mailto:x@y">m</a> <a href="javascript:void(0)">j</a>
      <a href="http://sub.example.com/s">sub</a> <a rel="nofollow" href="/nf">nf</a></body></html>"""
    page = parse_page(task(html, allow_domains=("example.com",)))
    assert page.title == "Hello World"
    assert page.noindex and not page.nofollow
    assert page.canonical == "http://example.com/canon"
    assert page.links == [
        "http://example.com/dir/a",
        "http://example.com/b?z=1&a=2",  # the first spelling on the page; the reordered twin is the same key
        "https://other.org/x",
        "http://sub.example.com/s",
        "http://example.com/nf",
    ]
    followed = [u for _, _, u in page.follow]
    assert followed == ["http://example.com/dir/a", "http://example.com/b?z=1&a=2", "http://sub.example.com/s"]
    assert all(len(fp) == 8 for fp, _, _ in page.follow)
    assert page.text_length > 0
    pickle.loads(pickle.dumps(page))  # it crosses a process boundary


def test_meta_nofollow_and_no_follow_setting() -> None:
    html = b'<meta name="robots" content="nofollow"><a href="/x">x</a>'
    assert parse_page(task(html)).follow == [] and parse_page(task(html)).links == ["http://example.com/x"]
    assert parse_page(task(b'<a href="/x">x</a>', follow=False)).follow == []


def test_base_href_is_honoured() -> None:
    page = parse_page(task(b'<base href="http://example.com/other/"><a href="y">y</a>'))
    assert page.links == ["http://example.com/other/y"]


def test_links_are_capped_and_counted() -> None:
    html = "".join(f'<a href="/l/{i}">x</a>' for i in range(5000)).encode()
    page = parse_page(task(html, max_links=100))
    assert len(page.links) == 100 and page.links_total == 5000 and len(page.follow) == 100


@pytest.mark.parametrize(
    ("body", "header", "title"),
    [
        ("<title>café</title>".encode("latin-1"), "iso-8859-1", "café"),
        ('<meta charset="windows-1251"><title>Привет</title>'.encode("cp1251"), None, "Привет"),
        ("<title>café</title>".encode("latin-1"), "utf-8", "caf\ufffd"),  # a lying header: replaced, no error
        (b"<title>ok</title>", "no-such-charset", "ok"),
        (b"<title>\xff\xfe broken <<< </title><div><p><b>", None, "\ufffd\ufffd broken <<<"),
    ],
)
def test_charsets_never_raise(body: bytes, header: str | None, title: str) -> None:
    page = parse_page(task(body, header_charset=header))
    assert page.error is None and page.title == title


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),
        ("br", brotli.compress),
    ],
)
def test_compressed_bodies_and_bombs(encoding: str, compress: object) -> None:
    fn = compress
    ok = parse_page(task(fn(b"<title>z</title>" + b" " * 1000), content_encoding=encoding))  # type: ignore[operator]
    assert ok.title == "z" and ok.size == 1016
    bomb = fn(b"\0" * (64 * 1024 * 1024))  # type: ignore[operator]
    assert len(bomb) < 1024 * 1024
    page = parse_page(task(bomb, content_encoding=encoding, max_bytes=1024 * 1024))
    assert page.error == "body_too_large" and page.links == []


def test_corrupt_compression_is_a_decode_error() -> None:
    assert parse_page(task(b"not gzip at all", content_encoding="gzip")).error == "decode_error"


def test_extraction_rules_and_ban_markers() -> None:
    html = b"""<h1 class="t"> Name </h1><span class="p">1</span><span class="p">2</span>
      <a class="next" href="/page2">next</a><p>Access denied by WAF</p>"""
    rules = (
        ExtractRule("name", "h1.t"),
        ExtractRule("prices", "span.p", all=True),
        ExtractRule("next", "a.next", attr="href"),
        ExtractRule("missing", "div.nope"),
    )
    page = parse_page(task(html, rules=rules, ban_markers=("Access denied",)))
    assert page.data == {"name": "Name", "prices": ["1", "2"], "next": "/page2", "missing": None}
    assert page.banned
