"""`--config crawl.toml` / `CRAWL_CONFIG`: read through the option table, below flags and variables, above defaults;
an unusable file is one line naming the file and the key, exit status 2, before anything starts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from crawler.cli import main
from crawler.errors import ConfigError
from crawler.options import OPTIONS
from crawler.settings import Settings
from crawler.testing.services import RedisServer
from tests.helpers import crawl_env
from tests.test_options_table import cli_settings

FLEET = """
concurrency = 11
per-host-delay = 0.5
proxy = ["http://fleet:filepw@gw.example:8000"]
follow = false
allow-domain = ["shop.example", "cdn.example"]
rotate-mb = 4
log-format = "json"
until-idle = true
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in {v for o in OPTIONS for v in o.envvars}:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_file_values_replace_the_defaults(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "crawl.toml", FLEET)
    s = cli_settings(["--config", str(cfg)])
    assert s.concurrency == 11 and s.politeness.per_host_delay_s == 0.5
    assert s.proxy.urls == ("http://fleet:filepw@gw.example:8000",)
    assert s.scope.follow is False and s.scope.allow_domains == ("shop.example", "cdn.example")
    assert s.output.rotate_bytes == 4 * 1024 * 1024 and s.output.log_format == "json" and s.lifecycle.until_idle
    assert s.fetch.timeout_s == Settings().fetch.timeout_s  # not in the file: the default
    assert Settings.from_env({"CRAWL_CONFIG": str(cfg)}) == s


def test_precedence_is_flag_then_variable_then_file_then_default(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "crawl.toml", FLEET)
    clean_env.setenv("CRAWL_CONFIG", str(cfg))
    assert cli_settings([]).concurrency == 11  # file over default
    clean_env.setenv("CRAWL_CONCURRENCY", "12")
    clean_env.setenv("CRAWL_PROXY_URL", "http://env:envpw@gw.example:8001")
    s = cli_settings([])
    assert s.concurrency == 12 and s.proxy.urls == ("http://env:envpw@gw.example:8001",)  # variable over file
    assert s.politeness.per_host_delay_s == 0.5  # the file still sets the rest
    s = cli_settings(["--concurrency", "13", "--follow", "--proxy", "http://flag:flagpw@gw.example:8002"])
    assert s.concurrency == 13 and s.scope.follow is True  # flag over variable and file
    assert s.proxy.urls == ("http://flag:flagpw@gw.example:8002",)
    env = {"CRAWL_CONFIG": str(cfg), "CRAWL_CONCURRENCY": "12"}
    assert Settings.from_env(env).concurrency == 12 and Settings.from_env(env, concurrency=13).concurrency == 13


def test_config_flag_wins_over_crawl_config(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CRAWL_CONFIG", str(write(tmp_path / "env.toml", "concurrency = 21\n")))
    assert cli_settings(["--config", str(write(tmp_path / "flag.toml", "concurrency = 22\n"))]).concurrency == 22
    assert cli_settings([]).concurrency == 21


def test_the_file_serves_every_command(tmp_path: Path, redis_server: RedisServer, crawl_name: str) -> None:
    """A fleet shares one file: `crawl stats` finds Redis and the crawl name in it, and ignores the worker keys
    (a value no worker could use does not stop it)."""
    seeds = write(tmp_path / "seeds.txt", "http://a.example/\nhttp://b.example/\n")
    cfg = write(tmp_path / "crawl.toml", f'crawl = "{crawl_name}"\nredis = "{redis_server.url}"\nconcurrency = 0\n')
    env = crawl_env({"CRAWL_CONFIG": str(cfg)})
    run = [sys.executable, "-m", "crawler"]
    added = subprocess.run([*run, "enqueue", str(seeds)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert added.returncode == 0 and added.stdout.strip().startswith("added=2"), added.stderr
    shown = subprocess.run([*run, "stats", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["enqueued"] == 2
    assert not (tmp_path / ".crawl").exists()  # no embedded Redis: the file's URL was used


BAD_FILES = [
    ("unknown-key", "concurency = 4\n", r"unknown key 'concurency' \(did you mean 'concurrency'\?\)"),
    ("underscored-key", "per_host_delay = 1\n", r"unknown key 'per_host_delay' \(did you mean 'per-host-delay'\?\)"),
    ("config-in-config", 'config = "other.toml"\n', r"unknown key 'config'"),
    ("not-an-int", 'concurrency = "many"\n', r"key 'concurrency': expected an integer, got str 'many'"),
    ("float-for-int", "concurrency = 4.5\n", r"key 'concurrency': expected an integer, got float"),
    ("bool-for-number", "timeout = true\n", r"key 'timeout': expected a number, got bool"),
    ("out-of-range", "concurrency = 0\n", r"--concurrency must be .*, got 0 \(from .*crawl.toml, key 'concurrency'\)"),
    ("bad-choice", 'log-format = "xml"\n', r"--log-format: .*'xml'.* \(from .*crawl.toml, key 'log-format'\)"),
    ("bad-regex", 'include = ["a(("]\n', r"--include 'a\(\(' is not a valid regular expression.*key 'include'"),
    ("bad-proxy", 'proxy = ["ftp://u:pw@h:1"]\n', r"must start with http://.*key 'proxy'"),
    ("header-no-colon", 'header = ["Authorization Bearer s3cr3t"]\n', r"--header takes 'Name: value'.*key 'header'"),
    ("a-table", "[fetch]\ntimeout = 3\n", r"key 'fetch': settings are top-level keys, not tables"),
    ("not-toml", "concurrency = = 3\n", r"is not valid TOML"),
    ("list-of-wrong", "allow-domain = [1]\n", r"key 'allow-domain': expected a string or a list of them, got int"),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_file_is_one_line_naming_file_and_key_exit_2(
    case: str, text: str, message: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    cfg = write(tmp_path / "crawl.toml", text)
    result = CliRunner().invoke(main, ["worker", "--config", str(cfg), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crawl: error: "), result.stderr
    assert str(cfg) in lines[0] and re.search(message, lines[0]), lines[0]
    assert "s3cr3t" not in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError):  # the library reads it the same way
        Settings.from_env({"CRAWL_CONFIG": str(cfg)})


def test_a_missing_file_through_the_real_command(tmp_path: Path) -> None:
    """As a user runs it: one line, exit 2, no traceback, nothing started."""
    proc = subprocess.run(
        [sys.executable, "-m", "crawler", "worker", "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=crawl_env({"CRAWL_CONFIG": str(tmp_path / "nope.toml")}),
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"crawl: error: cannot read config file {tmp_path / 'nope.toml'}: No such file or directory"
    ]
    assert not (tmp_path / "out").exists() and not (tmp_path / ".crawl").exists()
