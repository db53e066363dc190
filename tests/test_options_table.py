"""The option table is the one declaration of every setting: the README, .env.example, the dataclasses, `--help`,
the CLI and `Settings.from_env()` all follow it, and these tests fail when one of them drifts."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from crawler.cli import _settings, main
from crawler.options import GROUPS, OPTIONS, SettingError, markdown_table, readme_block
from crawler.settings import Settings
from tests.helpers import REPO_ROOT, crawl_env

HAS_CURL = importlib.util.find_spec("curl_cffi") is not None


def test_readme_option_table_is_the_rendered_table() -> None:
    block = readme_block((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert block == markdown_table(), "README drifted: run `python -m crawler.options --update-readme README.md`"


def test_the_module_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "crawler.options", "--markdown"], capture_output=True, text=True, env=crawl_env()
    )
    assert out.returncode == 0 and out.stdout == markdown_table()
    assert all(f"`{o.envvars[0]}`" in out.stdout for o in OPTIONS)


def test_env_example_names_every_variable_and_only_those() -> None:
    text = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    mentioned = set(re.findall(r"\b(?:CRAWL_[A-Z0-9_]+|REDIS_URL)\b", text))
    table = {v for o in OPTIONS for v in o.envvars}
    assert table - mentioned == set(), "variables missing from .env.example"
    assert mentioned - table == set(), ".env.example names variables no option reads"


def _leaf_fields() -> Iterator[str]:
    for f in dataclasses.fields(Settings):
        sub = getattr(Settings(), f.name)
        if dataclasses.is_dataclass(sub):
            yield from (f"{f.name}.{g.name}" for g in dataclasses.fields(sub))
        else:
            yield f.name


def test_every_field_has_one_row_and_every_row_a_field() -> None:
    primary = [o.field for o in OPTIONS if o.field is not None and not o.merge]
    assert len(primary) == len(set(primary)), "two rows set the same field"
    assert set(primary) == set(_leaf_fields())
    assert {o.group for o in OPTIONS} <= set(GROUPS)
    assert len({o.key for o in OPTIONS}) == len(OPTIONS) and len({o.envvars[0] for o in OPTIONS}) == len(OPTIONS)


def test_dataclass_defaults_are_the_table_defaults() -> None:
    s = Settings()
    for o in OPTIONS:
        if o.field is None or o.merge or o.default is None:
            continue
        group, _, name = o.field.rpartition(".")
        value = getattr(getattr(s, group) if group else s, name)
        assert value == o.to_field(o.default), o.flag


def test_help_shows_every_option_in_its_group() -> None:
    from click.testing import CliRunner

    text = CliRunner().invoke(main, ["worker", "--help"], terminal_width=200).output
    sections = re.split(r"^(\S[^\n]*):$", text, flags=re.MULTILINE)
    by_title = dict(zip(sections[1::2], sections[2::2], strict=True))
    for o in OPTIONS:
        body = by_title[GROUPS[o.group]]
        assert re.search(rf"^\s+{re.escape(o.flag.split('/')[0])}\b", body, re.MULTILINE), o.flag
        assert o.envvars[0] in body


def sample_env(tmp: Path) -> dict[str, str]:
    """A valid value, different from the default, for every variable of the table."""
    (tmp / "proxies.txt").write_text("http://u:filepw@gw2.example:8001\n")
    (tmp / "rules.json").write_text('{"h1": "h1"}')
    (tmp / "parser.py").write_text("def parse(page):\n    return []\n")
    (tmp / "crawl.toml").write_text("")  # only its being read matters here
    env = {
        "CRAWL_REDIS_URL": "redis://:redispw@127.0.0.1:6390/3",
        "CRAWL_NAME": "every-var",
        "CRAWL_HOME": str(tmp / "home"),
        "CRAWL_CONFIG": str(tmp / "crawl.toml"),
        "CRAWL_CONCURRENCY": "7",
        "CRAWL_WORKER_ID": "w-7",
        "CRAWL_USER_AGENT": "probe/2.0",
        "CRAWL_HEADERS": "Accept-Language: fr|Authorization: Bearer tok-123",
        "CRAWL_COOKIES": "sid=cookie-1; theme=dark",
        "CRAWL_MAX_BODY_BYTES": "12345",
        "CRAWL_TIMEOUT": "9.5",
        "CRAWL_CONNECT_TIMEOUT": "3",
        "CRAWL_READ_TIMEOUT": "4",
        "CRAWL_MAX_REDIRECTS": "2",
        "CRAWL_RETRIES": "1",
        "CRAWL_FETCHER": "curl" if HAS_CURL else "aiohttp",
        "CRAWL_IMPERSONATE": "chrome" if HAS_CURL else "",
        "CRAWL_ALLOW_PRIVATE_NETWORKS": "true",
        "CRAWL_PROXY_URL": "http://u-{session}:gwpw@gw.example:8000 http://v:gwpw2@gw.example:8002",
        "CRAWL_PROXY_FILE": str(tmp / "proxies.txt"),
        "CRAWL_SESSION_REQUESTS": "5",
        "CRAWL_BAN_MARKERS": "Access denied|captcha page",
        "CRAWL_PROXY_MAX_CONNECTIONS": "40",
        "CRAWL_GATEWAY_FAILURES": "9",
        "CRAWL_PER_HOST_CONCURRENCY": "2",
        "CRAWL_PER_HOST_DELAY": "0.25",
        "CRAWL_ROBOTS": "false",
        "CRAWL_ROBOTS_AGENT": "probe-bot",
        "CRAWL_MAX_CRAWL_DELAY": "3",
        "CRAWL_FOLLOW": "false",
        "CRAWL_MAX_DEPTH": "4",
        "CRAWL_ALLOW_DOMAINS": "Example.COM. example.org",
        "CRAWL_INCLUDE": r"/products/ /c/\d+",
        "CRAWL_EXCLUDE": r"\?sort=",
        "CRAWL_FOLLOW_SELECTOR": "main .list",
        "CRAWL_KEEP_TRACKING_PARAMS": "1",
        "CRAWL_SITEMAPS_FROM_ROBOTS": "1",
        "CRAWL_MAX_LINKS": "50",
        "CRAWL_PARSE_WORKERS": "3",
        "CRAWL_PARSER": f"{tmp / 'parser.py'}:parse",
        "CRAWL_PARSE_TIMEOUT": "2.5",
        "CRAWL_EXTRACT": str(tmp / "rules.json"),
        "CRAWL_OUTPUT": str(tmp / "out"),
        "CRAWL_ROTATE_MB": "8",
        "CRAWL_WARC": str(tmp / "warc"),
        "CRAWL_WARC_CONTENT": "all",
        "CRAWL_WARC_ROTATE_MB": "16",
        "CRAWL_LOG_FORMAT": "json",
        "CRAWL_LOG_INTERVAL": "2",
        "CRAWL_METRICS_PORT": "9411",
        "CRAWL_METRICS_HOST": "0.0.0.0",
        "CRAWL_UNTIL_IDLE": "yes",
        "CRAWL_IDLE_HORIZON": "60",
        "CRAWL_MAX_PAGES": "99",
        "CRAWL_GRACE_S": "4",
        "CRAWL_LEASE_TTL_S": "6",
        "CRAWL_HEARTBEAT_TTL_S": "7",
        "CRAWL_REDIS_WAIT": "1.5",
    }
    return env


def cli_settings(argv: list[str], command: str = "worker") -> Settings:
    """What `crawl <command> <argv>` would run with, parsed by the real command without running it."""
    cmd = main.get_command(click.Context(main), command)
    assert cmd is not None
    with cmd.make_context(command, argv) as ctx, ctx.scope():
        return _settings(OPTIONS)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in {v for o in OPTIONS for v in o.envvars}:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def field_value(s: Settings, path: str) -> Any:
    group, _, name = path.rpartition(".")
    return getattr(getattr(s, group) if group else s, name)


def test_every_variable_reaches_the_same_settings_through_the_cli_and_from_env(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    env = sample_env(tmp_path)
    assert {o.envvars[0] for o in OPTIONS} == set(env), "give the new variable a sample value here"
    for k, v in env.items():
        clean_env.setenv(k, v)
    from_env = Settings.from_env(env)
    assert cli_settings([]) == from_env
    defaults = Settings()
    changed = {o.field for o in OPTIONS if o.field and field_value(from_env, o.field) != field_value(defaults, o.field)}
    unchanged = {o.field for o in OPTIONS if o.field} - changed
    if not HAS_CURL:
        unchanged -= {"fetch.fetcher", "fetch.impersonate"}
    assert unchanged == set(), "these variables were not read"
    assert from_env.proxy.urls[-1] == "http://u:filepw@gw2.example:8001"  # --proxy-file adds to --proxy
    assert from_env.scope.allow_domains == ("example.com", "example.org")
    assert from_env.output.rotate_bytes == 8 * 1024 * 1024
    assert from_env.fetch.headers == (("Accept-Language", "fr"), ("Authorization", "Bearer tok-123"))
    assert not from_env.follow_links


def test_flags_give_what_the_same_variables_give(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    """The command line parses a value as its variable does (same click type, same converter)."""
    env = sample_env(tmp_path)
    argv: list[str] = []
    for o in OPTIONS:
        value = env[o.envvars[0]]
        if not value:
            continue
        if o.switch:
            argv.append(o.flag.split("/")[0 if click.BOOL.convert(value, None, None) else 1])
        elif o.is_flag:
            argv += [o.flag] if click.BOOL.convert(value, None, None) else []
        elif o.multiple:
            parts = value.split(o.env_sep) if o.env_sep else value.split()
            for p in parts:
                argv += [o.flag, p.strip()]
        else:
            argv += [o.flag, value]
    assert cli_settings(argv) == Settings.from_env(env)


def test_a_bad_variable_names_its_flag_and_variable(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingError, match=r"^--per-host-delay must be .* \(from CRAWL_PER_HOST_DELAY\)$"):
        Settings.from_env({"CRAWL_PER_HOST_DELAY": "-1"})
    clean_env.setenv("CRAWL_MAX_CRAWL_DELAY", "-3")
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["worker", "--parse-workers", "1"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "crawl: error: --max-crawl-delay must be a finite number >= 0, got -3.0 (from CRAWL_MAX_CRAWL_DELAY)"
    ]
