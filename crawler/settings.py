"""One settings object for every command, grouped by concern: `settings.fetch`, `.proxy`, `.politeness`,
`.scope`, `.parse`, `.output`, `.lifecycle`, beside where the frontier is and the worker's shape at the top.

Precedence: command-line flag > `CRAWL_*` environment variable > config file (`--config`, `CRAWL_CONFIG`) >
default. Every option is declared once, in `crawler.options` (the defaults below come from it); `crawler.config`
reads the sources the same way for the CLI and for `Settings.from_env()`. Validation lives in each group's
`__post_init__`, so an impossible value is refused before anything starts, with a message naming the flag.
Secrets (passwords in URLs, Authorization and Cookie values) are masked in every `repr`.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from crawler.config import Resolved, resolve, with_source
from crawler.errors import ConfigError
from crawler.extraction import ExtractRule as ExtractRule
from crawler.extraction import check_css
from crawler.extraction import load_extract_rules as load_extract_rules
from crawler.options import DEFAULT_USER_AGENT as DEFAULT_USER_AGENT
from crawler.options import MIB as MIB
from crawler.options import SettingError, default, flag_for
from crawler.redact import redact_url, url_password


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, and a container's CPU quota (cgroup v2 cpu.max)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]  # noqa: SIM115 - tiny, read once
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def default_parse_workers(warc: bool = False) -> int:
    """One core for the worker's event loop, the others parse; with --warc one process more, since building and
    gzipping a page's WARC records costs about what parsing it does, and a lone parse process on a 2-core machine
    was the crawl's bottleneck (scripts/bench.py, one interleaved run: 644 pages/s with one parse process, 865 with
    two, 998 without --warc)."""
    return max(1, available_cpus() - 1) + (1 if warc else 0)


def default_worker_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname()).lstrip(".")
    return f"{host or 'worker'}-{os.getpid()}"


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a header or cookie name
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "host"})
_PARSER_SPEC = re.compile(r"(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|.+\.py):[A-Za-z_]\w*")


def _fail(path: str, message: str) -> SettingError:
    flag = flag_for(path)
    return SettingError(f"{flag} {message}", flag)


def _number(path: str, value: float | None, zero: bool = False) -> None:
    """Refuse NaN, infinities, negatives, and zero unless `zero`; None is "not set"."""
    if value is not None and (not math.isfinite(value) or value < 0 or (value == 0 and not zero)):
        raise _fail(path, f"must be a finite number {'>= 0' if zero else '> 0'}, got {value}")


def _masked_repr(obj: Any, masks: Mapping[str, Callable[[Any], Any]]) -> str:
    parts = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        shown = masks[f.name](v) if f.name in masks else repr(v)
        parts.append(f"{f.name}={shown}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def _check_pairs(path: str, pairs: tuple[tuple[str, str], ...], forbidden: str) -> None:
    for name, value in pairs:
        if not _TOKEN.fullmatch(name):
            raise _fail(path, f"name {name!r} is not a valid token")
        if any(c in value for c in forbidden):
            raise _fail(
                path, f"{name}: the value holds a forbidden character (CR, LF, NUL{', ;' * (';' in forbidden)})"
            )


@dataclass(frozen=True, slots=True, repr=False)
class FetchSettings:
    """How one URL is fetched."""

    user_agent: str = default("fetch.user_agent")
    headers: tuple[tuple[str, str], ...] = default("fetch.headers")
    cookies: tuple[tuple[str, str], ...] = default("fetch.cookies")
    max_body_bytes: int = default("fetch.max_body_bytes")
    timeout_s: float = default("fetch.timeout_s")  # total per attempt: the only deadline a drip-feeder cannot reset
    connect_timeout_s: float = default("fetch.connect_timeout_s")
    read_timeout_s: float = default("fetch.read_timeout_s")
    max_redirects: int = default("fetch.max_redirects")
    retries: int = default("fetch.retries")  # retries after the first attempt
    fetcher: str = default("fetch.fetcher")
    impersonate: str | None = default("fetch.impersonate")
    allow_private_networks: bool = default("fetch.allow_private_networks")

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "timeout_s", "connect_timeout_s", "read_timeout_s"):
            _number(f"fetch.{name}", getattr(self, name))
        _number("fetch.max_redirects", self.max_redirects, zero=True)
        _number("fetch.retries", self.retries, zero=True)
        if not self.user_agent or any(c in self.user_agent for c in "\r\n\0"):
            raise _fail("fetch.user_agent", "must be one non-empty line")
        _check_pairs("fetch.headers", self.headers, "\r\n\0")
        _check_pairs("fetch.cookies", self.cookies, "\r\n\0;")
        for name, _ in self.headers:
            if name.lower() in _FRAMING_HEADERS:
                raise _fail("fetch.headers", f"{name}: the HTTP client sets this header itself")
        if self.fetcher not in ("aiohttp", "curl"):
            raise _fail("fetch.fetcher", f"must be aiohttp or curl, got {self.fetcher!r}")
        if self.impersonate is not None:
            if self.fetcher != "curl":
                raise _fail("fetch.impersonate", "needs --fetcher curl")
            profiles = impersonate_profiles()
            if self.impersonate not in profiles:
                raise _fail("fetch.impersonate", f"{self.impersonate!r} is not a curl_cffi profile (e.g. chrome, "
                            f"firefox, safari, edge, chrome131; {len(profiles)} in all)")  # fmt: skip
        elif self.fetcher == "curl":
            impersonate_profiles()

    def secrets(self) -> tuple[str, ...]:
        """Values of Authorization and Cookie headers (whole, and the credential after the scheme) and cookies."""
        out: list[str] = []
        for name, value in self.headers:
            if name.lower() in _SECRET_HEADERS:
                out += [value, value.split(" ", 1)[-1], *(c.partition("=")[2].strip() for c in value.split(";"))]
        out += [value for _, value in self.cookies]
        return tuple(dict.fromkeys(s for s in out if s))

    def __repr__(self) -> str:
        return _masked_repr(
            self,
            {
                "headers": lambda hs: repr(tuple((n, "***" if n.lower() in _SECRET_HEADERS else v) for n, v in hs)),
                "cookies": lambda cs: repr(tuple((n, "***") for n, _ in cs)),
            },
        )


def impersonate_profiles() -> frozenset[str]:
    """curl_cffi's browser targets (from its own list, so a new curl_cffi brings its new profiles)."""
    try:
        import typing

        from curl_cffi.requests.impersonate import BrowserTypeLiteral
    except ImportError:
        raise SettingError("--fetcher curl needs curl_cffi: pip install curl_cffi", "--fetcher") from None
    return frozenset(typing.get_args(BrowserTypeLiteral))


@dataclass(frozen=True, slots=True, repr=False)
class ProxySettings:
    """The residential gateways requests go through."""

    urls: tuple[str, ...] = default("proxy.urls")
    session_requests: int = default("proxy.session_requests")  # rotate a sticky session after this many (0: bans)
    ban_markers: tuple[str, ...] = default("proxy.ban_markers")
    max_connections: int | None = default("proxy.max_connections")  # fleet-wide, coordinated through Redis
    gateway_failures: int = default("proxy.gateway_failures")  # consecutive failures that open its breaker

    def __post_init__(self) -> None:
        from crawler.proxies import parse_proxy_url

        for p in self.urls:
            try:
                parse_proxy_url(p)  # raises ConfigError with the redacted URL
            except SettingError:
                raise
            except ConfigError as exc:
                raise SettingError(str(exc), "--proxy") from exc
        _number("proxy.session_requests", self.session_requests, zero=True)
        _number("proxy.max_connections", self.max_connections)
        _number("proxy.gateway_failures", self.gateway_failures)
        if any(not m for m in self.ban_markers):
            raise _fail("proxy.ban_markers", "must not be empty")

    def __repr__(self) -> str:
        return _masked_repr(self, {"urls": lambda us: repr(tuple(redact_url(u) for u in us))})


@dataclass(frozen=True, slots=True)
class PolitenessSettings:
    """What the crawl owes each site, enforced crawl-wide by the frontier."""

    per_host_concurrency: int = default("politeness.per_host_concurrency")  # 0: unlimited
    per_host_delay_s: float = default("politeness.per_host_delay_s")
    robots: bool = default("politeness.robots")
    robots_agent: str = default("politeness.robots_agent")
    max_crawl_delay_s: float = default("politeness.max_crawl_delay_s")

    def __post_init__(self) -> None:
        _number("politeness.per_host_concurrency", self.per_host_concurrency, zero=True)
        _number("politeness.per_host_delay_s", self.per_host_delay_s, zero=True)
        _number("politeness.max_crawl_delay_s", self.max_crawl_delay_s, zero=True)
        if not re.fullmatch(r"[A-Za-z_-]+", self.robots_agent):
            raise _fail(
                "politeness.robots_agent", f"takes letters, '_' and '-' only (RFC 9309), got {self.robots_agent!r}"
            )


@dataclass(frozen=True, slots=True)
class ScopeSettings:
    """Which links of a page are added to the frontier."""

    follow: bool | None = default("scope.follow")  # None: not given (on, or off with a parser)
    max_depth: int | None = default("scope.max_depth")
    allow_domains: tuple[str, ...] = default("scope.allow_domains")
    include: tuple[re.Pattern[str], ...] = default("scope.include")
    exclude: tuple[re.Pattern[str], ...] = default("scope.exclude")
    follow_selector: str | None = default("scope.follow_selector")
    sitemaps_from_robots: bool = default("scope.sitemaps_from_robots")
    keep_tracking_params: bool = default("scope.keep_tracking_params")
    max_links_per_page: int = default("scope.max_links_per_page")

    def __post_init__(self) -> None:
        _number("scope.max_depth", self.max_depth, zero=True)
        _number("scope.max_links_per_page", self.max_links_per_page, zero=True)
        for d in self.allow_domains:
            if not d or "/" in d or ":" in d:
                raise _fail("scope.allow_domains", f"takes a bare domain like example.com, got {d!r}")
        if self.follow_selector is not None:
            problem = check_css(self.follow_selector)
            if problem is not None:
                raise _fail("scope.follow_selector", f"{self.follow_selector!r} is not a valid CSS selector: {problem}")


@dataclass(frozen=True, slots=True)
class ParseSettings:
    """The parse pool and what runs in it."""

    workers: int | None = None  # None: Settings.parse_workers picks (it depends on --warc)
    parser: str | None = default("parse.parser")  # "module:function" or "path/to/file.py:function"
    timeout_s: float = default("parse.timeout_s")
    extract_rules: tuple[ExtractRule, ...] = default("parse.extract_rules")

    def __post_init__(self) -> None:
        _number("parse.workers", self.workers)
        _number("parse.timeout_s", self.timeout_s)
        if self.parser is not None:
            if not _PARSER_SPEC.fullmatch(self.parser):
                raise _fail("parse.parser", f"takes module:function or path/to/file.py:function, got {self.parser!r}")
            path = self.parser.rpartition(":")[0]
            if path.endswith(".py") and not os.path.isfile(path):
                raise _fail("parse.parser", f"{self.parser!r}: no file {path}")


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """What the worker writes: records, WARC files, log lines, metrics."""

    dir: Path = default("output.dir")  # noqa: RUF009 - Path is immutable
    rotate_bytes: int = default("output.rotate_bytes")
    warc_dir: Path | None = default("output.warc_dir")  # noqa: RUF009 - Path is immutable
    warc_content: str = default("output.warc_content")
    warc_rotate_bytes: int = default("output.warc_rotate_bytes")
    log_format: str = default("output.log_format")
    log_interval_s: float = default("output.log_interval_s")
    metrics_port: int | None = default("output.metrics_port")
    metrics_host: str = default("output.metrics_host")

    def __post_init__(self) -> None:
        _number("output.rotate_bytes", self.rotate_bytes)
        _number("output.warc_rotate_bytes", self.warc_rotate_bytes)
        _number("output.log_interval_s", self.log_interval_s)
        if self.log_format not in ("text", "json"):
            raise _fail("output.log_format", f"must be text or json, got {self.log_format!r}")
        if self.warc_content not in ("html", "all"):
            raise _fail("output.warc_content", f"must be html or all, got {self.warc_content!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise _fail("output.metrics_port", f"must be 0-65535, got {self.metrics_port}")
        if not re.fullmatch(r"[A-Za-z0-9.:_-]+", self.metrics_host):
            raise _fail("output.metrics_host", f"takes a host name or an IP address, got {self.metrics_host!r}")


@dataclass(frozen=True, slots=True)
class LifecycleSettings:
    """When the worker starts, stops and gives up."""

    until_idle: bool = default("lifecycle.until_idle")
    idle_horizon_s: float = default("lifecycle.idle_horizon_s")
    max_pages: int | None = default("lifecycle.max_pages")
    grace_s: float = default("lifecycle.grace_s")
    lease_ttl_s: float = default("lifecycle.lease_ttl_s")
    heartbeat_ttl_s: float = default("lifecycle.heartbeat_ttl_s")
    redis_wait_s: float = default("lifecycle.redis_wait_s")

    def __post_init__(self) -> None:
        _number("lifecycle.max_pages", self.max_pages)
        for name in ("idle_horizon_s", "grace_s", "redis_wait_s"):
            _number(f"lifecycle.{name}", getattr(self, name), zero=True)
        _number("lifecycle.lease_ttl_s", self.lease_ttl_s)
        _number("lifecycle.heartbeat_ttl_s", self.heartbeat_ttl_s)
        if self.lease_ttl_s < 1:
            raise _fail("lifecycle.lease_ttl_s", "must be at least 1 second (leases are renewed every ttl/3)")


_GROUPS: dict[str, type] = {
    "fetch": FetchSettings,
    "proxy": ProxySettings,
    "politeness": PolitenessSettings,
    "scope": ScopeSettings,
    "parse": ParseSettings,
    "output": OutputSettings,
    "lifecycle": LifecycleSettings,
}


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    # where the frontier lives
    redis_url: str | None = default("redis_url")  # None: the embedded server under `home`
    crawl_name: str = default("crawl_name")
    home: Path = default("home")  # noqa: RUF009 - Path is immutable
    # the worker's shape
    worker_id: str = field(default_factory=default_worker_id)
    concurrency: int = default("concurrency")
    fetch: FetchSettings = field(default_factory=FetchSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    politeness: PolitenessSettings = field(default_factory=PolitenessSettings)
    scope: ScopeSettings = field(default_factory=ScopeSettings)
    parse: ParseSettings = field(default_factory=ParseSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)

    def __post_init__(self) -> None:
        _number("concurrency", self.concurrency)
        if self.concurrency > 100_000:
            raise _fail("concurrency", f"{self.concurrency} is beyond what one process can hold open")
        from crawler.keys import CrawlKeys

        if not self.worker_id or not set(self.worker_id) <= _ID_CHARS or self.worker_id.startswith("."):
            raise _fail(
                "worker_id", f"{self.worker_id!r}: use letters, digits, '-', '_', '.' (it names the output file)"
            )
        try:
            CrawlKeys(self.crawl_name)
        except ValueError as exc:
            raise SettingError(str(exc), "--crawl") from exc
        if self.redis_url is not None:
            from crawler.connection import validate_redis_url

            try:
                validate_redis_url(self.redis_url)
            except SettingError:
                raise
            except ConfigError as exc:
                raise SettingError(str(exc), "--redis") from exc

    @property
    def max_attempts(self) -> int:
        return self.fetch.retries + 1

    @property
    def parse_workers(self) -> int:
        """Parse processes: `--parse-workers`, else cores - 1, one more with --warc."""
        if self.parse.workers is not None:
            return self.parse.workers
        return default_parse_workers(warc=self.output.warc_dir is not None)

    @property
    def lease_batch(self) -> int:
        """URLs per lease call: big enough that Redis round trips per page stay far below one."""
        return max(1, min(256, self.concurrency))

    @property
    def follow_links(self) -> bool:
        """Add a page's in-scope links to the frontier: `--follow`, or by default unless a parser is set (then only
        what the parser yields is followed)."""
        return self.scope.follow if self.scope.follow is not None else self.parse.parser is None

    def secrets(self) -> tuple[str, ...]:
        """Every secret value these settings hold, for scrubbing free text."""
        out = [url_password(p) for p in self.proxy.urls]
        if self.redis_url:
            out.append(url_password(self.redis_url))
        return tuple(s for s in (*out, *self.fetch.secrets()) if s)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def __repr__(self) -> str:
        return _masked_repr(
            self, {"redis_url": lambda u: repr(redact_url(u) if u else u), **{g: repr for g in _GROUPS}}
        )

    __str__ = __repr__

    @classmethod
    def from_resolved(cls, resolved: Resolved) -> Settings:
        """Build from the values `crawler.config.resolve` read; an invalid value's error says where it came from."""
        top: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for path, value in resolved.values.items():
            group, _, name = path.rpartition(".")
            (groups.setdefault(group, {}) if group else top)[name] = value
        try:
            parts = {g: _GROUPS[g](**kw) for g, kw in groups.items()}
            return cls(**top, **parts)
        except SettingError as exc:
            raise SettingError(with_source(str(exc), resolved.sources.get(exc.flag, "")), exc.flag) from exc

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Build from `CRAWL_*` variables and the `CRAWL_CONFIG` file, exactly as the CLI reads them; `flags`
        (keywords named as the flags, in their units: `per_host_delay=0.5`, `rotate_mb=64`) win over both."""
        return cls.from_resolved(resolve(flags, os.environ if env is None else env))

    @classmethod
    def from_flags(cls, **flags: Any) -> Settings:
        """Build as the command line would from these flags alone (no environment): `from_flags(timeout=5)`."""
        return cls.from_resolved(resolve(flags, {}))
