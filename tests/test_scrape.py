"""The user-parser contract, in process: loading, the Page it is given, what it may yield, how failures are kept.

The parsers are real files written to tmp_path (the `path/to/file.py:function` form) or functions of this module
(the `module:function` form), run through the real parse_page.
"""

from __future__ import annotations

import json
import pickle
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crawler import Follow, Page
from crawler.errors import ConfigError
from crawler.linkrules import LinkRules
from crawler.parse import ParseTask, parse_page
from crawler.scrape import effective_follow, load_parser

URL = "http://shop.test/dir/page.html"
HTML = b"""<html><head><title>T</title></head><body>
<div class="list"><a href="/a">a</a> <a href="b.html">b</a></div>
<p><a href="/c">c</a> <a href="http://elsewhere.test/x">off</a></p></body></html>"""

SEEN: list[dict[str, Any]] = []  # what `echo` saw, when it runs in this process


def echo(page: Page) -> Iterator[dict[str, Any] | Follow]:
    """Yields what it was given, as JSON, and follows every link plus one relative and one off-site URL."""
    view = {
        "url": page.url,
        "final_url": page.final_url,
        "status": page.status,
        "content_type": page.headers.get("Content-Type"),
        "depth": page.depth,
        "data": page.data,
        "label": page.label,
        "title": title.text() if (title := page.css_first("title")) is not None else None,
        "links": page.links,
        "n_anchors": len(page.css("a")),
        "text_has_body": "elsewhere" in page.text,
        "charset": page.charset,
        "same_tree": page.tree.css_first("title") is not None,
    }
    SEEN.append(view)
    yield view
    yield from (Follow(u, data={"from": page.url}, label="next", priority=3) for u in page.links)
    yield Follow("rel/d.html", headers={"X-Trace": "1"})
    yield Follow("http://elsewhere.test/y")


def raises(page: Page) -> Any:
    yield {"first": 1}
    raise ValueError("no price\nsecond line")


def returns_one(page: Page) -> dict[str, Any]:
    return {"only": page.url}


def returns_none(page: Page) -> None:
    return None


def two_args(page: Page, extra: int) -> None:
    return None


def task(**kw: Any) -> ParseTask:
    base: dict[str, Any] = {"body": HTML, "url": URL, "final_url": URL, "follow": False}
    base.update(kw)
    return ParseTask(**base)


def test_the_page_attributes_and_the_follows() -> None:
    SEEN.clear()
    t = task(
        parser_spec="tests.test_scrape:echo",
        status=200,
        depth=2,
        data=json.dumps({"category": "Poésie"}),
        label="listing",
        headers=(("Content-Type", "text/html; charset=utf-8"),),
    )
    page = parse_page(t)
    assert page.error is None and page.items_count == 1
    item = json.loads(page.items)
    assert item.pop("_url") == URL
    assert item == SEEN[0]
    assert item["data"] == {"category": "Poésie"} and item["label"] == "listing" and item["depth"] == 2
    assert item["content_type"] == "text/html; charset=utf-8" and item["title"] == "T" and item["n_anchors"] == 4
    all_links = ["http://shop.test/a", "http://shop.test/dir/b.html", "http://shop.test/c", "http://elsewhere.test/x"]
    assert item["links"] == all_links == page.links  # no rules: every link; scope applies to what is followed
    # follow=False (a parser without --follow): only the parser's follows, in scope, with their options
    assert page.follow == []
    by_url = {f.url: f for f in page.requests}
    assert list(by_url) == [*all_links[:3], "http://shop.test/dir/rel/d.html"]
    assert json.loads(by_url["http://shop.test/a"].data or "") == {"from": URL}
    assert by_url["http://shop.test/a"].label == "next" and by_url["http://shop.test/a"].priority == 3
    assert by_url["http://shop.test/dir/rel/d.html"].headers == (("X-Trace", "1"),)
    assert by_url["http://shop.test/dir/rel/d.html"].data is None
    pickle.loads(pickle.dumps(page))  # it crosses a process boundary


def test_with_follow_on_the_builtin_links_are_kept_and_the_parser_options_win() -> None:
    page = parse_page(task(parser_spec="tests.test_scrape:echo", follow=True))
    assert [f.url for f in page.requests][:3] == [
        "http://shop.test/a",
        "http://shop.test/dir/b.html",
        "http://shop.test/c",
    ]
    assert all(f.label == "next" for f in page.requests[:3])
    assert page.follow == []  # each built-in link was also the parser's request, which carries the options


def test_an_exception_is_the_pages_recorded_error_and_its_output_is_dropped() -> None:
    page = parse_page(task(parser_spec="tests.test_scrape:raises", follow=True))
    assert page.error == "parser_error"
    assert page.parser_error_detail == "ValueError: no price"  # type and first line only
    assert page.items == b"" and page.items_count == 0
    assert page.title == "T" and len(page.follow) == 3  # the built-in record and links stay


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("yield {'s': {1, 2}}", "item 0 is not JSON-serialisable: TypeError: Object of type set"),
        ("yield {'x': float('nan')}", "item 0 is not JSON-serialisable: ValueError"),
        ("yield {'ok': 1}\n    yield 'text'", "output 1 is a str, neither a dict"),
        ("return 'text'", "the parser returned a str"),
        ("yield Follow('/x', data={'s': object()})", "Follow data is not JSON-serialisable"),
        ("yield Follow('/x', data={'s': 'x' * 9000})", "Follow data is over 8 KiB"),
        ("yield Follow(42)", "TypeError: Follow url must be a str"),
    ],
)
def test_bad_output_is_a_recorded_error(tmp_path: Path, body: str, detail: str) -> None:
    f = tmp_path / "bad.py"
    f.write_text(f"from crawler import Follow\n\ndef parse(page):\n    {body}\n")
    page = parse_page(task(parser_spec=f"{f}:parse"))
    assert page.error == "parser_error" and page.items == b""
    assert page.parser_error_detail is not None and page.parser_error_detail.startswith(detail), page


def test_return_forms_and_item_url() -> None:
    one = parse_page(task(parser_spec="tests.test_scrape:returns_one"))
    assert json.loads(one.items) == {"only": URL, "_url": URL} and one.items_count == 1
    none = parse_page(task(parser_spec="tests.test_scrape:returns_none"))
    assert none.error is None and none.items == b"" and none.requests == []


def test_the_parser_runs_on_2xx_pages_only() -> None:
    assert parse_page(task(parser_spec="tests.test_scrape:returns_one", status=404)).items == b""
    assert parse_page(task(parser_spec="tests.test_scrape:returns_one", status=0)).items_count == 1  # a saved file


def test_a_router_picks_by_label_and_an_unknown_label_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "routes.py"
    f.write_text(
        textwrap.dedent(
            """
            def default(page):
                return {"via": "default"}
            def product(page):
                return {"via": "product", "data": page.data}
            router = {None: default, "product": product}
            """
        )
    )
    spec = f"{f}:router"
    assert json.loads(parse_page(task(parser_spec=spec)).items)["via"] == "default"
    got = json.loads(parse_page(task(parser_spec=spec, label="product", data={"k": 1})).items)
    assert got == {"via": "product", "data": {"k": 1}, "_url": URL}
    bad = parse_page(task(parser_spec=spec, label="nope"))
    assert bad.error == "parser_error" and "no function for label 'nope'" in (bad.parser_error_detail or "")


def test_link_rules_apply_to_the_parsers_follows_and_page_links() -> None:
    rules = LinkRules(exclude=(r"/c$",), follow_selector="div.list")
    SEEN.clear()
    page = parse_page(task(parser_spec="tests.test_scrape:echo", link_rules=rules))
    assert SEEN[0]["links"] == ["http://shop.test/a", "http://shop.test/dir/b.html"]
    assert [f.url for f in page.requests] == [*SEEN[0]["links"], "http://shop.test/dir/rel/d.html"]
    page = parse_page(task(parser_spec="tests.test_scrape:echo", link_rules=LinkRules(include=("/rel/",))))
    assert [f.url for f in page.requests] == ["http://shop.test/dir/rel/d.html"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected module:function"),
        ("no_such_module_xyz:parse", "cannot import no_such_module_xyz: ModuleNotFoundError: No module named"),
        ("tests.test_scrape:missing", "tests.test_scrape has no attribute 'missing'"),
        ("tests.test_scrape:URL", "URL is a str, not a function"),
        ("tests.test_scrape:two_args", "must take one argument, the page"),
        ("/no/such/file.py:parse", "no such file /no/such/file.py"),
    ],
)
def test_a_parser_that_cannot_be_loaded_is_a_one_line_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_parser(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_import_time_exception_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "broken.py"
    f.write_text("import json\nraise RuntimeError('boom at import\\nmore')\n")
    with pytest.raises(ConfigError, match=r"cannot import .*broken.py: RuntimeError: boom at import$"):
        load_parser(f"{f}:parse")
    (tmp_path / "syntax.py").write_text("def parse(page):\n  return (\n")
    with pytest.raises(ConfigError, match="SyntaxError"):
        load_parser(f"{tmp_path / 'syntax.py'}:parse")
    bad_router = tmp_path / "bad_router.py"
    bad_router.write_text("router = {None: 42}\n")
    with pytest.raises(ConfigError, match=r"router\[None\] is a int"):
        load_parser(f"{bad_router}:router")


def test_follow_is_tri_state() -> None:
    assert effective_follow(None, None) is True
    assert effective_follow(None, "m:f") is False
    assert effective_follow(True, "m:f") is True and effective_follow(False, None) is False
