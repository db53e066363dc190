"""Decoding per the WHATWG Encoding Standard (issue 12): labels as browsers read them, BOMs, meta sniffing.

Each case failed on the hand-written decoder this replaced (w3lib's html_to_unicode now decides)."""

from __future__ import annotations

import pytest

from crawler.parse import ParseTask, parse_page

URL = "http://h.test/"


def parse(body: bytes, header: str | None = None) -> tuple[str | None, str]:
    page = parse_page(ParseTask(body=body, url=URL, final_url=URL, header_charset=header))
    assert page.error is None
    return page.title, page.charset


def test_iso_8859_1_is_windows_1252() -> None:
    title, charset = parse(b"<title>\x93Quoted\x94 \x80</title>", "iso-8859-1")
    assert title == "“Quoted” €" and charset == "cp1252"


def test_latin1_in_meta_is_windows_1252_too() -> None:
    title, _ = parse(
        b'<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1"><title>\x80 \xe9</title>'
    )
    assert title == "€ é"


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_a_bom_decides_and_the_title_is_found(codec: str) -> None:
    body = "<html><head><title>Überschrift</title></head><body><a href='/x'>x</a></body></html>".encode(codec)
    if codec == "utf-16-be":
        body = b"\xfe\xff" + body
    page = parse_page(ParseTask(body=body, url=URL, final_url=URL, header_charset="iso-8859-1"))
    assert page.title == "Überschrift" and page.links == ["http://h.test/x"]  # the BOM beats the header


def test_meta_charset_when_the_header_has_none() -> None:
    assert parse('<meta charset="windows-1251"><title>Привет</title>'.encode("cp1251")) == ("Привет", "cp1251")
    assert parse('<meta charset="shift_jis"><title>日本</title>'.encode("shift_jis"))[0] == "日本"


def test_the_header_beats_meta_and_unknown_labels_fall_back_to_utf8() -> None:
    assert parse('<meta charset="windows-1251"><title>é</title>'.encode(), "utf-8")[0] == "é"
    assert parse("<title>ok é</title>".encode(), "x-no-such-charset") == ("ok é", "utf-8")
    assert parse(b"<title>\xff broken</title>") == ("\ufffd broken", "utf-8")
