"""Google's robots.txt conformance expectations (google/robotstxt `robots_test.cc`, vendored as JSON) against ours.

Every case passes, or is listed with `expected_difference` (the RFC 9309 reason) and `ours` (our answer), which is
asserted too: a listed difference that disappears fails here, so the list in the data stays true.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crawler.errors import ConfigError
from crawler.robots import canonical_path, parse_robots, validate_agent_token
from crawler.robots_cache import split_url

DATA = json.loads((Path(__file__).parent / "data" / "robots" / "google_cases.json").read_text(encoding="utf-8"))


def _id(case: dict[str, Any]) -> str:
    return f"{case['test']}-{case['agent'] or 'EMPTY'}-{case['url'][-40:] or 'EMPTY'}"


def _answer(case: dict[str, Any]) -> bool | str:
    try:
        return parse_robots(case["robotstxt"], case["agent"]).allowed(split_url(case["url"])[1])
    except ConfigError:
        return "ConfigError"


@pytest.mark.parametrize("case", DATA["cases"], ids=[_id(c) for c in DATA["cases"]])
def test_google_allow_disallow_case(case: dict[str, Any]) -> None:
    answer = _answer(case)
    if "expected_difference" in case:
        assert case["ours"] != case["allowed"], "a listed difference must differ from Google"
        assert answer == case["ours"], case["expected_difference"]
    else:
        assert answer == case["allowed"]


def test_the_table_is_the_whole_port() -> None:
    """Guards the vendored file against silent truncation: the counts of the port as written."""
    assert DATA["_source"]["commit"] == "22b355ff855419e6a3ff8ff09c0ad7fdb17116f9"
    assert len(DATA["cases"]) == 145
    differences = [c for c in DATA["cases"] if "expected_difference" in c]
    assert len(differences) == 9
    assert all("RFC 9309" in c["expected_difference"] for c in differences)


@pytest.mark.parametrize("case", DATA["agent_tokens"], ids=[repr(c["token"]) for c in DATA["agent_tokens"]])
def test_google_valid_agent_tokens(case: dict[str, Any]) -> None:
    if case["valid"]:
        assert validate_agent_token(case["token"]) == case["token"]
    else:
        with pytest.raises(ConfigError):
            validate_agent_token(case["token"])


@pytest.mark.parametrize("case", DATA["parse_cases"], ids=[f"{c['name']}-{c['agent']}" for c in DATA["parse_cases"]])
def test_google_parse_cases(case: dict[str, Any]) -> None:
    rules = parse_robots(case["robotstxt_latin1"].encode("latin-1"), case["agent"])
    assert len(rules.rules) == case["rules"]
    assert list(rules.sitemaps) == case["sitemaps"]


@pytest.mark.parametrize("case", DATA["paths"], ids=[c["url"] or "EMPTY" for c in DATA["paths"]])
def test_google_path_of_url(case: dict[str, Any]) -> None:
    assert split_url(case["url"])[1] == case["path"]


@pytest.mark.parametrize("case", DATA["escapes"], ids=[c["pattern"] for c in DATA["escapes"]])
def test_google_pattern_escaping(case: dict[str, Any]) -> None:
    assert canonical_path(case["pattern"]) == case["escaped"]
