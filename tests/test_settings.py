"""Settings: validation before anything starts, precedence, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from crawler.errors import ConfigError
from crawler.proxies import ProxyPool
from crawler.redact import redact_url
from crawler.settings import Settings, load_extract_rules


@pytest.mark.parametrize(
    "kw",
    [
        {"concurrency": 0},
        {"concurrency": -5},
        {"per_host_delay_s": -1},
        {"lease_ttl_s": 0.5},
        {"log_format": "xml"},
        {"proxies": ("ftp://h:1",)},
        {"proxies": ("http://u:p@h",)},
        {"redis_url": "mysql://h"},
        {"redis_url": "redis://h:99999"},
        {"crawl_name": "bad name!"},
        {"allow_domains": ("http://x.com",)},
    ],
)
def test_invalid_values_are_config_errors(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Settings(**kw)  # type: ignore[arg-type]


def test_secrets_are_masked_in_repr() -> None:
    s = Settings(proxies=("http://u-{session}:proxypw@gw:8000",), redis_url="redis://:redispw@r:6379/0")
    text = repr(s) + str(s)
    assert "proxypw" not in text and "redispw" not in text
    assert "http://u-{session}:***@gw:8000" in text
    assert set(s.secrets()) == {"proxypw", "redispw"}
    assert redact_url("http://gw:8000") == "http://gw:8000"


def test_env_then_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CRAWL_CONCURRENCY": "7", "CRAWL_PROXY_URL": "http://a:b@h:1 http://c:d@h:2", "REDIS_URL": "redis://x:1"}
    s = Settings.from_env(env, concurrency=9)
    assert s.concurrency == 9 and len(s.proxies) == 2 and s.redis_url == "redis://x:1"
    with pytest.raises(ConfigError):
        Settings.from_env({"CRAWL_CONCURRENCY": "many"})


def test_extract_rules_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_extract_rules(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_extract_rules(bad)
    sel = tmp_path / "sel.json"
    sel.write_text('{"x": "a[[["}')
    with pytest.raises(ConfigError, match="bad CSS selector"):
        load_extract_rules(sel)
    good = tmp_path / "good.json"
    good.write_text('{"t": "title", "links": {"css": "a", "attr": "href", "all": true}}')
    rules = load_extract_rules(good)
    assert [r.name for r in rules] == ["t", "links"] and rules[1].all and rules[1].attr == "href"


def test_sticky_sessions_rotate_on_count_and_ban() -> None:
    pool = ProxyPool(("http://user-{session}:pw@gw:8000",), session_requests=3, seed=1)
    first = pool.choose()
    assert first is not None and first.url.startswith("http://user-") and "{session}" not in first.url
    ids = [pool.choose().session_id for _ in range(2)]  # type: ignore[union-attr]
    assert ids == [first.session_id] * 2
    fourth = pool.choose()
    assert fourth is not None and fourth.session_id != first.session_id  # rotated after 3 requests
    pool.report(fourth, ok=False, ban=True)
    fifth = pool.choose()
    assert fifth is not None and fifth.session_id != fourth.session_id  # rotated on the ban
    assert fifth.redacted == "http://user-{session}:***@gw:8000"


def test_health_steers_choice_between_proxies() -> None:
    pool = ProxyPool(("http://a:1@good:1", "http://b:2@bad:2"), seed=3)
    for _ in range(200):
        c = pool.choose()
        assert c is not None
        pool.report(c, ok="good" in c.url)
    picks = [pool.choose() for _ in range(400)]
    good = sum(1 for c in picks if c is not None and "good" in c.url)
    assert good > 250  # power of two choices: the healthy one wins most draws
