"""One settings object for every command.

Precedence: command-line flag > `CRAWL_*` environment variable > default. The CLI declares each flag with its
`CRAWL_*` variable (click resolves the first two), and `Settings.from_env()` gives library users the same
environment mapping. Validation lives in `__post_init__`, so an impossible value is refused before anything starts.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from crawler.errors import ConfigError
from crawler.redact import redact_url, url_password

MIB = 1024 * 1024
DEFAULT_USER_AGENT = "crawl/0.1 (+https://github.com/crawl/crawl)"


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


def default_parse_workers() -> int:
    return max(1, available_cpus() - 1)


def default_worker_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname()).lstrip(".")
    return f"{host or 'worker'}-{os.getpid()}"


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")

# settings whose flag is not simply the field name with dashes
_FLAGS = {
    "per_host_delay_s": "--per-host-delay",
    "timeout_s": "--timeout",
    "log_interval_s": "--log-interval",
    "max_links_per_page": "--max-links",
    "output_rotate_bytes": "--rotate-mb",
    "connect_timeout_s": "connect timeout",
    "read_timeout_s": "read timeout",
}


@dataclass(frozen=True, slots=True)
class ExtractRule:
    """One user extraction rule: `name` <- text (or `attr`) of the elements matching `css`."""

    name: str
    css: str
    attr: str | None = None
    all: bool = False


def load_extract_rules(path: str | Path) -> tuple[ExtractRule, ...]:
    """Read `{"field": "css"}` or `{"field": {"css": ..., "attr": ..., "all": bool}}`; ConfigError when bad."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read extraction rules {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"extraction rules {path} are not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"extraction rules {path}: expected a JSON object of field -> CSS selector")
    rules: list[ExtractRule] = []
    for name, spec in raw.items():
        if isinstance(spec, str):
            rules.append(ExtractRule(name, spec))
        elif isinstance(spec, dict) and isinstance(spec.get("css"), str):
            attr = spec.get("attr")
            if attr is not None and not isinstance(attr, str):
                raise ConfigError(f"extraction rules {path}: field {name!r}: 'attr' must be a string")
            rules.append(ExtractRule(name, spec["css"], attr, bool(spec.get("all", False))))
        else:
            raise ConfigError(f"extraction rules {path}: field {name!r} needs a CSS selector string")
    # validate the selectors now, not in the parse pool at the first page
    from selectolax.lexbor import LexborHTMLParser

    probe = LexborHTMLParser("<html><body></body></html>")
    for r in rules:
        try:
            probe.css(r.css)
        except Exception as exc:  # selectolax raises a bare ValueError/SelectolaxError on a bad selector
            raise ConfigError(f"extraction rules {path}: field {r.name!r}: bad CSS selector {r.css!r}: {exc}") from None
    return tuple(rules)


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    # where the frontier lives
    redis_url: str | None = None  # None: the embedded server under `home`
    crawl_name: str = "default"
    home: Path = field(default_factory=lambda: Path(".crawl"))
    # the worker's shape
    concurrency: int = 64
    parse_workers: int = field(default_factory=default_parse_workers)
    worker_id: str = field(default_factory=default_worker_id)
    output_dir: Path = field(default_factory=lambda: Path("crawl-output"))
    output_rotate_bytes: int = 256 * MIB
    until_idle: bool = False
    max_pages: int | None = None
    # proxies
    proxies: tuple[str, ...] = ()
    session_requests: int = 0  # rotate a sticky session after this many requests (0: only on ban signals)
    ban_markers: tuple[str, ...] = ()
    proxy_max_connections: int | None = None  # fleet-wide, coordinated through Redis
    # scope and politeness
    follow: bool = True
    max_depth: int | None = None
    allow_domains: tuple[str, ...] = ()
    per_host_concurrency: int = 8  # 0: unlimited
    per_host_delay_s: float = 0.0
    robots: bool = True
    user_agent: str = DEFAULT_USER_AGENT
    keep_tracking_params: bool = False
    allow_private_networks: bool = False
    # fetching
    max_body_bytes: int = 10 * MIB
    timeout_s: float = 30.0  # total per attempt: the only deadline a drip-feeding server cannot reset
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 15.0
    max_redirects: int = 10
    max_links_per_page: int = 1000
    retries: int = 3  # retries after the first attempt
    extract_rules: tuple[ExtractRule, ...] = ()
    # lifecycle
    grace_s: float = 20.0
    lease_ttl_s: float = 30.0
    log_interval_s: float = 10.0
    log_format: str = "text"
    metrics_port: int | None = None
    heartbeat_ttl_s: float = 15.0

    def __post_init__(self) -> None:
        def positive(name: str, value: float, allow_zero: bool = False) -> None:
            if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
                flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
                raise ConfigError(f"{flag} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value}")

        positive("concurrency", self.concurrency)
        positive("parse_workers", self.parse_workers)
        positive("per_host_concurrency", self.per_host_concurrency, allow_zero=True)
        positive("per_host_delay_s", self.per_host_delay_s, allow_zero=True)
        positive("max_body_bytes", self.max_body_bytes)
        positive("timeout_s", self.timeout_s)
        positive("connect_timeout_s", self.connect_timeout_s)
        positive("read_timeout_s", self.read_timeout_s)
        positive("max_redirects", self.max_redirects, allow_zero=True)
        positive("max_links_per_page", self.max_links_per_page, allow_zero=True)
        positive("retries", self.retries, allow_zero=True)
        positive("grace_s", self.grace_s, allow_zero=True)
        positive("lease_ttl_s", self.lease_ttl_s)
        positive("log_interval_s", self.log_interval_s)
        positive("session_requests", self.session_requests, allow_zero=True)
        positive("output_rotate_bytes", self.output_rotate_bytes)
        positive("heartbeat_ttl_s", self.heartbeat_ttl_s)
        if self.max_pages is not None:
            positive("max_pages", self.max_pages)
        if self.max_depth is not None:
            positive("max_depth", self.max_depth, allow_zero=True)
        if self.proxy_max_connections is not None:
            positive("proxy_max_connections", self.proxy_max_connections)
        if self.concurrency > 100_000:
            raise ConfigError(f"--concurrency {self.concurrency} is beyond what one process can hold open")
        if self.lease_ttl_s < 1:
            raise ConfigError("--lease-ttl-s must be at least 1 second (leases are renewed every ttl/3)")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be 0-65535, got {self.metrics_port}")
        from crawler.keys import CrawlKeys
        from crawler.proxies import parse_proxy_url

        if not self.worker_id or not set(self.worker_id) <= _ID_CHARS or self.worker_id.startswith("."):
            raise ConfigError(
                f"--worker-id {self.worker_id!r}: use letters, digits, '-', '_', '.' (it names the output file)"
            )
        try:
            CrawlKeys(self.crawl_name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for p in self.proxies:
            parse_proxy_url(p)  # raises ConfigError with the redacted URL
        if self.redis_url is not None:
            from crawler.connection import validate_redis_url

            validate_redis_url(self.redis_url)
        for d in self.allow_domains:
            if not d or "/" in d or ":" in d:
                raise ConfigError(f"--allow-domain takes a bare domain like example.com, got {d!r}")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    @property
    def lease_batch(self) -> int:
        """URLs per lease call: big enough that Redis round trips per page stay far below one."""
        return max(1, min(256, self.concurrency))

    def secrets(self) -> tuple[str, ...]:
        """Every secret value these settings hold, for scrubbing free text."""
        out = [url_password(p) for p in self.proxies]
        if self.redis_url:
            out.append(url_password(self.redis_url))
        return tuple(s for s in out if s)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "redis_url" and v:
                v = redact_url(v)
            elif f.name == "proxies":
                v = tuple(redact_url(p) for p in v)
            parts.append(f"{f.name}={v!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build from `CRAWL_*` variables (the same names the CLI reads), then apply keyword overrides."""
        env = dict(os.environ if env is None else env)
        kw: dict[str, Any] = {}
        redis_url = env.get("CRAWL_REDIS_URL") or env.get("REDIS_URL")
        if redis_url:
            kw["redis_url"] = redis_url
        simple: dict[str, tuple[str, Any]] = {
            "CRAWL_NAME": ("crawl_name", str),
            "CRAWL_HOME": ("home", Path),
            "CRAWL_CONCURRENCY": ("concurrency", int),
            "CRAWL_PARSE_WORKERS": ("parse_workers", int),
            "CRAWL_WORKER_ID": ("worker_id", str),
            "CRAWL_OUTPUT": ("output_dir", Path),
            "CRAWL_MAX_PAGES": ("max_pages", int),
            "CRAWL_SESSION_REQUESTS": ("session_requests", int),
            "CRAWL_MAX_DEPTH": ("max_depth", int),
            "CRAWL_PER_HOST_CONCURRENCY": ("per_host_concurrency", int),
            "CRAWL_PER_HOST_DELAY": ("per_host_delay_s", float),
            "CRAWL_MAX_BODY_BYTES": ("max_body_bytes", int),
            "CRAWL_TIMEOUT": ("timeout_s", float),
            "CRAWL_RETRIES": ("retries", int),
            "CRAWL_USER_AGENT": ("user_agent", str),
            "CRAWL_GRACE_S": ("grace_s", float),
            "CRAWL_LEASE_TTL_S": ("lease_ttl_s", float),
            "CRAWL_LOG_INTERVAL": ("log_interval_s", float),
            "CRAWL_LOG_FORMAT": ("log_format", str),
            "CRAWL_METRICS_PORT": ("metrics_port", int),
            "CRAWL_PROXY_MAX_CONNECTIONS": ("proxy_max_connections", int),
        }
        for var, (name, conv) in simple.items():
            if env.get(var):
                try:
                    kw[name] = conv(env[var])
                except ValueError:
                    raise ConfigError(f"{var}={env[var]!r} is not a valid {conv.__name__}") from None
        if env.get("CRAWL_PROXY_URL"):
            kw["proxies"] = tuple(p for p in env["CRAWL_PROXY_URL"].split() if p)
        kw.update(overrides)
        return cls(**kw)
