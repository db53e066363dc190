"""`crawl parse`'s engine: one page, the real parser, from a saved file or live through the test proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.errors import ConfigError
from crawler.parse_once import format_outcome, parse_once
from crawler.settings import Settings
from crawler.testing.services import RunningServer, start_server
from examples.bookshop import site
from tests.helpers import PROXY_PASSWORD, PROXY_USER

SPEC = "examples.bookshop.parser:router"
SETTINGS = Settings.from_flags(follow=False)  # as a parser without --follow


@pytest.fixture(scope="module")
def shop() -> Iterator[RunningServer]:
    with start_server("examples.bookshop.site", "--port", 0) as s:
        yield s


@pytest.fixture(scope="module")
def proxy() -> Iterator[RunningServer]:
    with start_server(
        "crawler.testing.proxy_server", "--port", 0, "--user", PROXY_USER, "--password", PROXY_PASSWORD
    ) as p:
        yield p


def test_a_saved_listing_with_its_url_and_data(tmp_path: Path) -> None:
    f = tmp_path / "listing.html"
    f.write_bytes(site.render("/catalogue/poetry/page-1.html")[1])
    base = "http://shop.test/catalogue/poetry/page-1.html"
    out = asyncio.run(parse_once(str(f), SPEC, SETTINGS, base_url=base, label="listing", data={"category": "Poésie"}))
    assert out.ok and out.status == 0 and out.url == base
    expected = ["http://shop.test" + b.path for b in site.CATALOGUE if b.category_slug == "poetry"]
    assert [f.url for f in out.follows] == expected
    assert all(f.label == "product" and json.loads(f.data or "") == {"category": "Poésie"} for f in out.follows)
    text = format_outcome(out)
    assert f"follows  {len(expected)}" in text and 'data={"category": "Poésie"}' in text


def test_a_live_product_through_the_proxy(shop: RunningServer, proxy: RunningServer) -> None:
    book = next(b for b in site.CATALOGUE if b.stock == 0 and not b.removed)
    gateway = proxy.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")
    settings = Settings.from_flags(follow=False, proxy=(gateway,))
    before = proxy.stats()["requests"]
    out = asyncio.run(parse_once(shop.url + book.path, SPEC, settings, label="product", data={"category": "X"}))
    assert out.ok and out.status == 200 and proxy.stats()["requests"] == before + 1
    expected = next(i for i in site.expected_items() if i["sku"] == book.slug)
    assert out.items == [{**expected, "category": "X", "_url": shop.url + book.path}]
    shown = json.loads(format_outcome(out, as_json=True))
    assert shown["items"] == out.items and shown["error"] is None


def test_a_failing_parser_shows_its_traceback_and_a_dead_url_its_cause(tmp_path: Path) -> None:
    f = tmp_path / "p.py"
    f.write_text("def parse(page):\n    return helper(page)\n\ndef helper(page):\n    raise KeyError('price')\n")
    html = tmp_path / "x.html"
    html.write_text("<title>x</title>")
    out = asyncio.run(parse_once(str(html), f"{f}:parse", SETTINGS))
    assert not out.ok and out.page is not None and out.page.error == "parser_error"
    text = format_outcome(out)
    assert "error    parser_error: KeyError: 'price'" in text and "in helper" in text  # the whole traceback
    dead = asyncio.run(parse_once("http://127.0.0.1:9/", f"{f}:parse", Settings.from_flags(follow=False, timeout=5.0)))
    assert not dead.ok and (dead.fetch_error or "").startswith("connect")
    with pytest.raises(ConfigError, match="cannot read"):
        asyncio.run(parse_once(str(tmp_path / "missing.html"), f"{f}:parse", SETTINGS))
    with pytest.raises(ConfigError, match="cannot import"):
        asyncio.run(parse_once(str(html), "no_such_module_q:parse", SETTINGS))
