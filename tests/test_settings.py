"""Settings: validation before anything starts, precedence, secrets masked."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from crawler.errors import ConfigError
from crawler.options import OPTIONS
from crawler.proxies import ProxyPool
from crawler.redact import redact_url
from crawler.settings import (
    FetchSettings,
    LifecycleSettings,
    OutputSettings,
    ParseSettings,
    PolitenessSettings,
    ProxySettings,
    ScopeSettings,
    Settings,
    available_cpus,
    load_extract_rules,
)

BAD_VALUES: list[tuple[Callable[[], object], str]] = [
    (lambda: Settings(concurrency=0), "--concurrency must be"),
    (lambda: Settings(concurrency=-5), "--concurrency must be"),
    (lambda: Settings(concurrency=100_001), "--concurrency 100001"),
    (lambda: Settings(redis_url="mysql://h"), "redis://"),
    (lambda: Settings(redis_url="redis://h:99999"), "malformed Redis URL"),
    (lambda: Settings(crawl_name="bad name!"), "crawl name"),
    (lambda: Settings(worker_id="a/b"), "--worker-id"),
    (lambda: PolitenessSettings(per_host_delay_s=-1), "--per-host-delay must be"),
    (lambda: PolitenessSettings(per_host_delay_s=math.nan), "--per-host-delay must be"),
    (lambda: PolitenessSettings(robots_agent="crawl/0.1"), "--robots-agent takes letters"),
    (lambda: PolitenessSettings(robots_agent=""), "--robots-agent takes letters"),
    (lambda: PolitenessSettings(max_crawl_delay_s=-1), "--max-crawl-delay must be"),
    (lambda: LifecycleSettings(lease_ttl_s=0.5), "--lease-ttl-s must be at least 1 second"),
    (lambda: LifecycleSettings(redis_wait_s=-1), "--redis-wait must be"),
    (lambda: LifecycleSettings(idle_horizon_s=math.inf), "--idle-horizon must be"),
    (lambda: LifecycleSettings(max_pages=0), "--max-pages must be"),
    (lambda: OutputSettings(log_format="xml"), "--log-format must be text or json"),
    (lambda: OutputSettings(metrics_port=70000), "--metrics-port must be 0-65535"),
    (lambda: OutputSettings(metrics_host="a b"), "--metrics-host takes"),
    (lambda: OutputSettings(warc_content="some"), "--warc-content must be html or all"),
    (lambda: OutputSettings(warc_rotate_bytes=0), "--warc-rotate-mb must be"),
    (lambda: ProxySettings(urls=("ftp://h:1",)), "must start with http://"),
    (lambda: ProxySettings(urls=("http://u:p@h",)), "explicit port"),
    (lambda: ProxySettings(gateway_failures=0), "--gateway-failures must be"),
    (lambda: ScopeSettings(allow_domains=("http://x.com",)), "--allow-domain takes a bare domain"),
    (lambda: ScopeSettings(follow_selector="a[[["), "--follow-selector 'a[[[' is not a valid CSS selector"),
    (lambda: ParseSettings(parser="nocolon"), "--parser takes module:function"),
    (lambda: ParseSettings(parser="pkg.mod:"), "--parser takes module:function"),
    (lambda: ParseSettings(parser="missing/file.py:parse"), "no file missing/file.py"),
    (lambda: ParseSettings(timeout_s=0), "--parse-timeout must be"),
    (lambda: FetchSettings(timeout_s=0), "--timeout must be"),
    (lambda: FetchSettings(connect_timeout_s=-1), "--connect-timeout must be"),
    (lambda: FetchSettings(headers=(("Bad Name", "v"),)), "--header name 'Bad Name' is not a valid token"),
    (lambda: FetchSettings(headers=(("X-A", "v\r\nInjected: 1"),)), "--header X-A: the value holds a forbidden"),
    (lambda: FetchSettings(headers=(("Content-Length", "3"),)), "--header Content-Length: the HTTP client sets"),
    (lambda: FetchSettings(cookies=(("sid", "a;b"),)), "--cookie sid: the value holds a forbidden"),
    (lambda: FetchSettings(fetcher="requests"), "--fetcher must be aiohttp or curl"),
    (lambda: FetchSettings(impersonate="chrome"), "--impersonate needs --fetcher curl"),
    (lambda: FetchSettings(user_agent="a\nb"), "--user-agent must be one non-empty line"),
]


@pytest.mark.parametrize(("build", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_invalid_values_are_one_line_config_errors_naming_the_flag(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("curl_cffi") is None, reason="curl_cffi is not installed")
def test_impersonate_profiles_come_from_curl_cffi() -> None:
    assert FetchSettings(fetcher="curl", impersonate="chrome131").impersonate == "chrome131"
    assert FetchSettings(fetcher="curl", impersonate="firefox").impersonate == "firefox"
    with pytest.raises(ConfigError, match="--impersonate 'chrom' is not a curl_cffi profile"):
        FetchSettings(fetcher="curl", impersonate="chrom")


def test_secrets_are_masked_in_repr() -> None:
    s = Settings(
        proxy=ProxySettings(urls=("http://u-{session}:proxypw@gw:8000",)),
        redis_url="redis://:redispw@r:6379/0",
        fetch=FetchSettings(
            headers=(("Authorization", "Bearer tokenpw"), ("Cookie", "a=cookiepw1"), ("X-Seen", "visible")),
            cookies=(("sid", "cookiepw2"),),
        ),
    )
    text = repr(s) + str(s)
    for secret in ("proxypw", "redispw", "tokenpw", "cookiepw1", "cookiepw2"):
        assert secret not in text
        assert any(secret in v for v in s.secrets())
    assert "http://u-{session}:***@gw:8000" in text and "('X-Seen', 'visible')" in text
    assert {"proxypw", "redispw", "tokenpw", "Bearer tokenpw", "cookiepw1", "cookiepw2"} <= set(s.secrets())
    assert redact_url("http://gw:8000") == "http://gw:8000"


def test_env_then_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"CRAWL_CONCURRENCY": "7", "CRAWL_PROXY_URL": "http://a:b@h:1 http://c:d@h:2", "REDIS_URL": "redis://x:1"}
    s = Settings.from_env(env, concurrency=9)
    assert s.concurrency == 9 and len(s.proxy.urls) == 2 and s.redis_url == "redis://x:1"
    assert Settings.from_env({**env, "CRAWL_REDIS_URL": "redis://y:2"}).redis_url == "redis://y:2"
    with pytest.raises(ConfigError, match=r"--concurrency: 'many' is not a valid integer.*CRAWL_CONCURRENCY"):
        Settings.from_env({"CRAWL_CONCURRENCY": "many"})
    assert Settings.from_env({"CRAWL_CONCURRENCY": ""}).concurrency == Settings().concurrency  # empty is unset


def test_from_flags_takes_the_flags_units() -> None:
    s = Settings.from_flags(timeout=5, rotate_mb=2, per_host_delay=0.5, header=["X-A: 1"], follow=False)
    assert s.fetch.timeout_s == 5 and s.output.rotate_bytes == 2 * 1024 * 1024
    assert s.politeness.per_host_delay_s == 0.5 and s.fetch.headers == (("X-A", "1"),) and s.scope.follow is False


def test_follow_is_tri_state_with_a_parser(tmp_path: Path) -> None:
    parser = tmp_path / "p.py"
    parser.write_text("def parse(page):\n    return []\n")
    assert Settings().follow_links  # the built-in behaviour: follow
    assert not Settings.from_flags(parser=f"{parser}:parse").follow_links  # only what the parser yields
    assert Settings.from_flags(parser="shop.parse:router", follow=True).follow_links
    assert not Settings.from_flags(follow=False).follow_links


def test_parse_workers_default_to_cores_minus_one_and_one_more_with_warc(tmp_path: Path) -> None:
    cores = available_cpus()
    assert Settings().parse_workers == max(1, cores - 1)
    assert Settings.from_flags(warc=tmp_path).parse_workers == max(1, cores - 1) + 1  # they build the records too
    assert Settings.from_flags(warc=tmp_path, parse_workers=3).parse_workers == 3  # a given number wins
    assert Settings.from_flags(parse_workers=1).parse_workers == 1


def test_link_rules_are_compiled_at_start() -> None:
    s = Settings.from_flags(include=[r"/p/\d+"], exclude=[r"\?sort="])
    assert s.scope.include[0].search("http://h/p/12") and s.scope.exclude[0].search("http://h/?sort=1")
    with pytest.raises(ConfigError, match=r"^--exclude '\[' is not a valid regular expression"):
        Settings.from_flags(exclude=["["])


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


CLI_BAD = [
    (["--robots-agent", "crawl/1"], "--robots-agent"),
    (["--max-crawl-delay", "-1"], "--max-crawl-delay"),
    (["--metrics-host", "a b"], "--metrics-host"),
    (["--redis-wait", "nan"], "--redis-wait"),
    (["--parser", "nocolon"], "--parser"),
    (["--include", "a(("], "--include"),
    (["--exclude", "[z"], "--exclude"),
    (["--follow-selector", "a[[["], "--follow-selector"),
    (["--header", "NoColonHere"], "--header"),
    (["--header", "Bad Name: v"], "--header"),
    (["--cookie", "novalue"], "--cookie"),
    (["--parse-timeout", "0"], "--parse-timeout"),
    (["--gateway-failures", "0"], "--gateway-failures"),
    (["--warc-content", "some"], "--warc-content"),
    (["--warc-rotate-mb", "0"], "--warc-rotate-mb"),
    (["--idle-horizon", "-1"], "--idle-horizon"),
    (["--fetcher", "requests"], "--fetcher"),
    (["--impersonate", "chrome"], "--impersonate"),
    (["--connect-timeout", "0"], "--connect-timeout"),
    (["--rotate-mb", "-2"], "--rotate-mb"),
    (["--concurrency", "many"], "--concurrency"),
]


@pytest.mark.parametrize(("args", "flag"), CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_bad_flag_is_one_line_and_exit_2(
    args: list[str], flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from crawler.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    env = {v: None for o in OPTIONS for v in o.envvars}  # the test's own environment must not leak in
    for command in (["worker"], ["run", str(tmp_path / "seeds.txt")]):
        result = CliRunner().invoke(main, [*command, "--output", str(out), *args], env=env)
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output and result.stdout == ""
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith(("crawl: error:", "Error:"))]
        others = [ln for ln in result.stderr.splitlines() if ln.strip() and ln not in errors]
        assert len(errors) == 1 and flag in errors[0], result.stderr
        assert all(ln.startswith(("Usage:", "Try ")) for ln in others), result.stderr
        assert not out.exists() and not (tmp_path / ".crawl").exists()
