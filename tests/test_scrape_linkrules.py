"""Link rules on the built-in links (no parser): include/exclude on the absolute URL, the follow selector."""

from __future__ import annotations

import pickle

import pytest

from crawler.errors import ConfigError
from crawler.linkrules import LinkRules
from crawler.parse import ParseTask, parse_page

URL = "http://h.test/dir/"
HTML = b"""<nav><a href="/cat/1">c1</a><a href="/cat/2?sort=price">c2</a></nav>
<main><ul class="products"><li><a href="/item/7">i7</a></li><li><a href="item/8">i8</a></li></ul>
<a class="next" href="/cat/1?page=2">next</a></main><footer><a href="/cart?add=7">cart</a>
<a href="/ITEM/9">upper</a></footer>"""


def follows(rules: LinkRules) -> list[str]:
    page = parse_page(ParseTask(body=HTML, url=URL, final_url=URL, link_rules=rules))
    assert len(page.links) == 7  # the record keeps every link of the page; the rules pick what is followed
    return [u for _, _, u in page.follow]


def test_no_rules_follow_everything_in_scope() -> None:
    assert len(follows(LinkRules())) == 7 and not LinkRules().active


def test_include_and_exclude_on_the_absolute_url() -> None:
    assert follows(LinkRules(include=(r"/item/",))) == ["http://h.test/item/7", "http://h.test/dir/item/8"]
    assert follows(LinkRules(include=(r"/item/\d+$", r"page=")))[-1] == "http://h.test/cat/1?page=2"
    got = follows(LinkRules(exclude=(r"/cart", r"sort=")))
    assert "http://h.test/cart?add=7" not in got and len(got) == 5
    # exclude wins over include; an inline flag pattern is matched on its own
    assert follows(LinkRules(include=(r"/item/", "(?i)/item/9"), exclude=("/7$",))) == [
        "http://h.test/dir/item/8",
        "http://h.test/ITEM/9",
    ]


def test_follow_selector_keeps_links_inside_matching_elements() -> None:
    assert follows(LinkRules(follow_selector="ul.products")) == ["http://h.test/item/7", "http://h.test/dir/item/8"]
    assert follows(LinkRules(follow_selector="a.next, nav")) == [
        "http://h.test/cat/1",
        "http://h.test/cat/2?sort=price",
        "http://h.test/cat/1?page=2",
    ]
    assert follows(LinkRules(follow_selector="ul.products", exclude=("/8$",))) == ["http://h.test/item/7"]
    assert follows(LinkRules(follow_selector="div.none")) == []


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"include": ("(unclosed",)}, "--include '(unclosed' is not a valid regular expression"),
        ({"exclude": ("[z-a]",)}, "--exclude '[z-a]' is not a valid regular expression"),
        ({"follow_selector": "a[[["}, "--follow-selector 'a[[[' is not a valid CSS selector"),
    ],
)
def test_bad_rules_are_config_errors(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        LinkRules(**kw)  # type: ignore[arg-type]


def test_rules_are_cheap_to_send() -> None:
    rules = LinkRules(include=("a",), exclude=("b",), follow_selector="main")
    assert pickle.loads(pickle.dumps(rules)) == rules and len(pickle.dumps(rules)) < 200
