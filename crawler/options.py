"""Every setting, declared once: one row per option (flag, environment variable, default, help, unit, type, group).

From this table come the click options of the commands (`crawler.cli`), the environment and config-file reading
(`crawler.config`), the defaults of the settings dataclasses (`crawler.settings`), and the README's option table
(`python -m crawler.options --markdown`; `tests/test_options_table.py` fails when README.md differs).

To add a setting: add a row here (the `field` is its dotted path in `Settings`), add the field to its group's
dataclass in `crawler/settings.py` with `= default("group.name")`, validate it in that group's `__post_init__`,
list its variable in `.env.example`, and regenerate the README table with
`python -m crawler.options --update-readme README.md`.

A value is in the flag's unit (`--rotate-mb 256`) until the row's `convert` turns it into the field's
(`output.rotate_bytes`). None means "not set": the field keeps its default.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crawler.errors import ConfigError

MIB = 1024 * 1024
DEFAULT_USER_AGENT = "crawl/0.1 (+https://github.com/crawl/crawl)"
# sections of `--help` and of the README table, in this order
GROUPS = {
    "frontier": "Frontier",
    "worker": "Worker",
    "fetch": "Fetching",
    "proxy": "Proxy gateway",
    "politeness": "Politeness",
    "scope": "Scope",
    "parse": "Parsing",
    "output": "Output and monitoring",
    "lifecycle": "Lifecycle",
}


class SettingError(ConfigError):
    """A value refused for one option; `flag` lets the reader say where the value came from (a variable, a file)."""

    def __init__(self, message: str, flag: str) -> None:
        super().__init__(message)
        self.flag = flag


Converter = Callable[["Option", Any], Any]


@dataclass(frozen=True, slots=True)
class Option:
    """One row of the table. `flag` is `--name`, or `--name/--no-name` for a switch; the config-file key is the
    flag without dashes (`per-host-delay`), the Python keyword the same with underscores (`per_host_delay`)."""

    flag: str
    field: str | None  # dotted path in Settings ("fetch.timeout_s"); None: read by crawler.config itself
    group: str
    help: str
    type: type = str  # int, float, str, Path (a directory), bool (a switch, or a flag when `flag` has no "/")
    default: Any = None  # in the flag's unit; None: not set
    unit: str = ""
    metavar: str | None = None
    env: str | None = None  # default: CRAWL_<KEY>
    env_aliases: tuple[str, ...] = ()
    multiple: bool = False  # repeatable flag, a list in the config file
    env_sep: str | None = None  # how the variable separates values of a repeatable option; None: whitespace
    choices: tuple[str, ...] = ()
    convert: Converter | None = None  # flag value -> field value
    merge: bool = False  # appended to the tuple an earlier row of the same field set (--proxy-file to --proxy)
    default_text: str | None = None  # shown instead of `default` (computed defaults)

    @property
    def name(self) -> str:
        return self.flag.split("/")[0].removeprefix("--")

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def envvars(self) -> tuple[str, ...]:
        return (self.env or "CRAWL_" + self.key.upper(), *self.env_aliases)

    @property
    def switch(self) -> bool:
        return "/" in self.flag

    @property
    def is_flag(self) -> bool:
        return self.type is bool and not self.switch

    def to_field(self, value: Any) -> Any:
        """A value in the flag's unit (already of the row's type) -> the field's value."""
        if self.multiple:
            value = tuple(value if value is not None else ())
        return self.convert(self, value) if self.convert is not None else value

    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.type is bool:
            return "on" if self.default else "off"
        if self.default is None or self.default == ():
            return ""
        shown = f"{self.default:g}" if isinstance(self.default, float) else str(self.default)
        return f"{shown} {self.unit}".strip()


# ------------------------------------------------------------------------------------------------ converters
def _mib(opt: Option, value: int) -> int:
    if value <= 0:
        raise SettingError(f"{opt.flag} must be > 0, got {value}", opt.flag)
    return value * MIB


def _proxies(opt: Option, value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p for item in value for p in item.split())


def _proxy_file(opt: Option, path: str | None) -> tuple[str, ...]:
    from crawler.proxies import read_proxy_file

    return read_proxy_file(path) if path else ()


def _extract(opt: Option, path: str | None) -> tuple[Any, ...]:
    from crawler.extraction import load_extract_rules

    return load_extract_rules(path) if path else ()


def _domains(opt: Option, value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(d.lower().strip(".") for d in value)


def _regexes(opt: Option, value: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    out = []
    for pattern in value:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise SettingError(f"{opt.flag} {pattern!r} is not a valid regular expression: {exc}", opt.flag) from None
    return tuple(out)


def _pairs(sep: str, form: str) -> Converter:
    def split(opt: Option, value: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        out = []
        for item in value:
            name, found, rest = item.partition(sep)
            if not found or not name.strip():
                # the value may be a secret (Authorization, a session cookie): never echo it
                raise SettingError(f"{opt.flag} takes {form!r}, got a value without {sep!r}", opt.flag)
            out.append((name.strip(), rest.strip()))
        return tuple(out)

    return split


# -------------------------------------------------------------------------------------------------- the table
Row = Option
OPTIONS: tuple[Option, ...] = (
    # where the frontier lives (every command)
    Row("--redis", "redis_url", "frontier", "Redis URL (`redis://`, `rediss://`, `unix://`); default: an embedded "
      "Redis under --home.", metavar="URL", env="CRAWL_REDIS_URL", env_aliases=("REDIS_URL",), default_text="embedded"),
    Row("--crawl", "crawl_name", "frontier", "Crawl namespace: its keys live under `crawl:{NAME}:`.", default="default",
      metavar="NAME", env="CRAWL_NAME"),
    Row("--home", "home", "frontier", "Directory of the embedded Redis (used when no --redis is given).", Path,
      default=Path(".crawl"), metavar="DIR"),
    Row("--config", None, "frontier", "TOML file of settings, keys named as the flags (concurrency = 64); flags "
      "and variables win over it.", metavar="FILE"),
    # the worker's shape
    Row("--concurrency", "concurrency", "worker", "Fetches in flight in this process.", int, 64, metavar="N"),
    Row("--worker-id", "worker_id", "worker", "Names the output file and the heartbeat.", metavar="ID",
      default_text="<hostname>-<pid>"),
    # fetching
    Row("--user-agent", "fetch.user_agent", "fetch", "User-Agent header.", default=DEFAULT_USER_AGENT, metavar="UA",
      default_text="crawl/0.1 (...)"),
    Row("--header", "fetch.headers", "fetch", "Extra request header 'Name: value' for every request (repeatable; "
      "Authorization and Cookie values are secrets).", multiple=True, env="CRAWL_HEADERS", env_sep="|",
      metavar="'NAME: VALUE'", convert=_pairs(":", "Name: value")),
    Row("--cookie", "fetch.cookies", "fetch", "Cookie 'name=value' sent with every request (repeatable; values are "
      "secrets).", multiple=True, env="CRAWL_COOKIES", env_sep=";", metavar="NAME=VALUE",
      convert=_pairs("=", "name=value")),
    Row("--max-body-bytes", "fetch.max_body_bytes", "fetch", "Body cap, raw and decompressed.", int, 10 * MIB,
      "bytes", "N", default_text="10 MiB"),
    Row("--timeout", "fetch.timeout_s", "fetch", "Total seconds per attempt.", float, 30.0, "s", "S"),
    Row("--connect-timeout", "fetch.connect_timeout_s", "fetch", "Seconds to open a connection.", float, 10.0, "s",
      "S"),
    Row("--read-timeout", "fetch.read_timeout_s", "fetch", "Seconds without a byte from the server.", float, 15.0,
      "s", "S"),
    Row("--max-redirects", "fetch.max_redirects", "fetch", "Redirects followed per attempt.", int, 10, metavar="N"),
    Row("--retries", "fetch.retries", "fetch", "Retries after the first attempt.", int, 3, metavar="N"),
    Row("--fetcher", "fetch.fetcher", "fetch", "HTTP client: aiohttp, or curl (curl_cffi: browser TLS "
      "fingerprints, HTTP/2).", default="aiohttp", choices=("aiohttp", "curl")),
    Row("--impersonate", "fetch.impersonate", "fetch", "Browser profile of the curl fetcher (chrome, firefox, "
      "safari, edge, or a versioned one such as chrome131).", metavar="PROFILE", default_text="none"),
    Row("--allow-private-networks", "fetch.allow_private_networks", "fetch", "Turn the SSRF guard off: fetch "
      "private, loopback and link-local addresses.", bool, False),
    # the proxy gateway
    Row("--proxy", "proxy.urls", "proxy", "Gateway URL `http://user:pass@host:port` (repeatable); `{session}` in the "
      "user is a sticky session id.", multiple=True, env="CRAWL_PROXY_URL", metavar="URL", convert=_proxies),
    Row("--proxy-file", "proxy.urls", "proxy", "File of gateway URLs, one per line (added to --proxy).",
      metavar="FILE", convert=_proxy_file, merge=True),
    Row("--session-requests", "proxy.session_requests", "proxy", "Rotate the sticky session after N requests "
      "(0: only on ban signals).", int, 0, metavar="N"),
    Row("--ban-marker", "proxy.ban_markers", "proxy", "Body text that means 'blocked': rotate the session and "
      "retry (repeatable).", multiple=True, env="CRAWL_BAN_MARKERS", env_sep="|", metavar="TEXT"),
    Row("--proxy-max-connections", "proxy.max_connections", "proxy", "Gateway connections for the whole crawl "
      "(all workers), coordinated through Redis.", int, metavar="N", default_text="no cap"),
    Row("--gateway-failures", "proxy.gateway_failures", "proxy", "Consecutive gateway failures that open its "
      "circuit breaker.", int, 5, metavar="N"),
    # politeness
    Row("--per-host-concurrency", "politeness.per_host_concurrency", "politeness", "Leases of one host at once, "
      "crawl-wide (0: unlimited).", int, 8, metavar="N"),
    Row("--per-host-delay", "politeness.per_host_delay_s", "politeness", "Seconds between two leases of one host, "
      "crawl-wide.", float, 0.0, "s", "S"),
    Row("--robots/--no-robots", "politeness.robots", "politeness", "Honour robots.txt (RFC 9309).", bool, True),
    Row("--robots-agent", "politeness.robots_agent", "politeness", "Product token matched against robots.txt "
      "User-agent lines (letters, `_`, `-`).", default="crawl", metavar="TOKEN"),
    Row("--max-crawl-delay", "politeness.max_crawl_delay_s", "politeness", "Cap on a robots.txt Crawl-delay.",
      float, 10.0, "s", "S"),
    # scope
    Row("--follow/--no-follow", "scope.follow", "scope", "Add the page's in-scope links to the frontier (default: "
      "on, off with --parser: then only what the parser yields is followed).", bool, default_text="on"),
    Row("--max-depth", "scope.max_depth", "scope", "Deepest link depth followed.", int, metavar="N",
      default_text="unlimited"),
    Row("--allow-domain", "scope.allow_domains", "scope", "Also follow links to this domain and its subdomains "
      "(repeatable).", multiple=True, env="CRAWL_ALLOW_DOMAINS", metavar="DOMAIN", convert=_domains),
    Row("--include", "scope.include", "scope", "Follow only links whose absolute URL matches this regular "
      "expression (repeatable: any of them).", multiple=True, metavar="REGEX", convert=_regexes),
    Row("--exclude", "scope.exclude", "scope", "Never follow links whose absolute URL matches this regular "
      "expression (repeatable).", multiple=True, metavar="REGEX", convert=_regexes),
    Row("--follow-selector", "scope.follow_selector", "scope", "Follow only links inside elements matching this "
      "CSS selector.", metavar="CSS"),
    Row("--sitemaps-from-robots", "scope.sitemaps_from_robots", "scope", "Also crawl the sitemaps that a seed "
      "host's robots.txt names (`Sitemap:` lines; read with `--no-robots` too).", bool, False),
    Row("--keep-tracking-params", "scope.keep_tracking_params", "scope", "Keep `utm_*`, `fbclid`, `gclid` in "
      "URLs.", bool, False),
    Row("--max-links", "scope.max_links_per_page", "scope", "Links kept per page (`links_total` counts them all).",
      int, 1000, metavar="N"),
    # parsing
    Row("--parse-workers", "parse.workers", "parse", "Parse processes (with `--warc` they also build the WARC "
      "records).", int, metavar="N", default_text="cores - 1; one more with --warc"),
    Row("--parser", "parse.parser", "parse", "Your parse function: `module:function`, or `path/to/file.py:function`.",
      metavar="SPEC"),
    Row("--parse-timeout", "parse.timeout_s", "parse", "Seconds a parser may run on one page.", float, 30.0, "s",
      "S"),
    Row("--extract", "parse.extract_rules", "parse", "JSON file of field -> CSS selector; results go to the "
      "record's data.", metavar="FILE", convert=_extract),
    # output and monitoring
    Row("--output", "output.dir", "output", "Directory of the `<worker-id>.jsonl` files.", Path, Path("crawl-output"),
      metavar="DIR"),
    Row("--rotate-mb", "output.rotate_bytes", "output", "Start a new output file past this size.", int, 256, "MiB",
      "N", convert=_mib),
    Row("--warc", "output.warc_dir", "output", "Also write WARC/1.1 files of the raw responses to this directory.",
      Path, metavar="DIR"),
    Row("--warc-content", "output.warc_content", "output", "Bodies kept in the WARC: html, or all (still under "
      "the body cap).", default="html", choices=("html", "all")),
    Row("--warc-rotate-mb", "output.warc_rotate_bytes", "output", "Start a new WARC file past this size.", int,
      1024, "MiB", "N", convert=_mib),
    Row("--log-format", "output.log_format", "output", "Throughput and event lines as text or JSON.",
      default="text", choices=("text", "json")),
    Row("--log-interval", "output.log_interval_s", "output", "Seconds between throughput lines.", float, 10.0, "s",
      "S"),
    Row("--metrics-port", "output.metrics_port", "output", "Serve Prometheus `/metrics` on this port.", int,
      metavar="PORT", default_text="off"),
    Row("--metrics-host", "output.metrics_host", "output", "Address `/metrics` listens on (0.0.0.0 in containers).",
      default="127.0.0.1", metavar="HOST"),
    # lifecycle
    Row("--until-idle", "lifecycle.until_idle", "lifecycle", "Exit 0 when nothing is queued, deferred or in "
      "flight crawl-wide.", bool, False),
    Row("--idle-horizon", "lifecycle.idle_horizon_s", "lifecycle", "With --until-idle, also wait for recurring URLs "
      "due within this many seconds.", float, 0.0, "s", "S"),
    Row("--max-pages", "lifecycle.max_pages", "lifecycle", "Stop after N pages.", int, metavar="N"),
    Row("--grace-s", "lifecycle.grace_s", "lifecycle", "On SIGTERM, seconds to finish in-flight work.", float, 20.0,
      "s", "S"),
    Row("--lease-ttl-s", "lifecycle.lease_ttl_s", "lifecycle", "Lease time-out, renewed every ttl/3 while a fetch "
      "runs.", float, 30.0, "s", "S"),
    Row("--heartbeat-ttl-s", "lifecycle.heartbeat_ttl_s", "lifecycle", "A silent worker leaves `crawl workers` "
      "after this.", float, 15.0, "s", "S"),
    Row("--redis-wait", "lifecycle.redis_wait_s", "lifecycle", "At start, seconds to wait for Redis to come up "
      "(0: fail at once).", float, 30.0, "s", "S"),
)  # fmt: skip
del Row

BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
BY_FLAG: dict[str, Option] = {o.flag.split("/")[0]: o for o in OPTIONS}
BY_FIELD: dict[str, Option] = {o.field: o for o in OPTIONS if o.field is not None and not o.merge}
FRONTIER_OPTIONS: tuple[Option, ...] = tuple(o for o in OPTIONS if o.group == "frontier")


def flag_for(path: str) -> str:
    """The flag that sets the field at `path` ("fetch.timeout_s" -> "--timeout"), for error messages."""
    opt = BY_FIELD.get(path)
    return opt.flag.split("/")[0] if opt is not None else path


def default(path: str) -> Any:
    """The default of the field at `path`, in the field's unit: the dataclasses take their defaults from here."""
    opt = BY_FIELD[path]
    return opt.to_field(opt.default)


# ------------------------------------------------------------------------------------------- the README table
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(options: Iterable[Option] = OPTIONS) -> str:
    """The README's option table, one bold row per group."""
    rows = ["| flag | env | default | meaning |", "|---|---|---|---|"]
    by_group: dict[str, list[Option]] = {}
    for o in options:
        by_group.setdefault(o.group, []).append(o)
    for group, title in GROUPS.items():
        if group not in by_group:
            continue
        rows.append(f"| **{title}** | | | |")
        for o in by_group[group]:
            if o.type is bool:
                flag = o.flag
            elif o.choices:
                flag = f"{o.flag} {'/'.join(o.choices)}"
            else:
                flag = f"{o.flag} {o.metavar or 'TEXT'}"
            flag_cell = f"`{flag}`" + (" (repeatable)" if o.multiple else "")
            env_cell = " / ".join(f"`{e}`" for e in o.envvars)
            if o.multiple:
                env_cell += f" (`{o.env_sep}`-separated)" if o.env_sep else " (space-separated)"
            shown = o.shown_default()
            literal = o.type in (str, Path) and shown not in ("", "none", "embedded")
            default_cell = f"`{shown}`" if literal else shown
            rows.append(f"| {_cell(flag_cell)} | {_cell(env_cell)} | {_cell(default_cell)} | {_cell(o.help)} |")
    return "\n".join(rows) + "\n"


START, END = "<!-- options:start -->", "<!-- options:end -->"


def readme_block(readme: str) -> str:
    """The text between the README's markers (what `markdown_table()` must equal)."""
    _, found, rest = readme.partition(START + "\n")
    body, found_end, _ = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"README has no {START} ... {END} block")
    return body


def update_readme(path: Path) -> bool:
    """Rewrite the block between the markers; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    new = text.replace(START + "\n" + readme_block(text) + END, START + "\n" + markdown_table() + END)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str]) -> int:
    """`python -m crawler.options --markdown` prints the table; `--update-readme README.md` rewrites it."""
    if argv[:1] == ["--markdown"]:
        sys.stdout.write(markdown_table())
        return 0
    if argv[:1] == ["--update-readme"] and len(argv) == 2:
        print("updated" if update_readme(Path(argv[1])) else "unchanged")
        return 0
    print("usage: python -m crawler.options --markdown | --update-readme README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
