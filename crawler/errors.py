"""One exception tree; aiohttp, curl_cffi and redis errors are translated into it once, at the boundary
(`crawler.fetch.translate_errors`, `crawler.curl_client.translate_curl_errors`), keeping the cause.

    CrawlError
    ├── ConfigError            bad settings or input: one-line message, exit status 2
    ├── RedisUnavailable       Redis cannot be reached or failed mid-call: the one error of the frontier's edge
    │                          (`crawler.connection.redis_errors` translates redis-py's errors, keeping the cause);
    │                          the worker backs off (`crawler.backoff`) and reconnects, never spends an attempt
    └── FetchError             one fetch attempt failed; `kind` is the stable label in records and metrics
        ├── ConnectError       "connect": refused, reset, DNS, TLS
        ├── FetchTimeout       "timeout": total or read deadline passed
        ├── ProxyError         "proxy": the gateway failed (502/504 from the gateway, tunnel refused)
        │   ├── ProxyAuthError "proxy_auth": the gateway answered 407: a configuration error, never a result
        │   └── GatewayUnreachable "gateway_down": the gateway itself cannot be reached (refused, reset): an
        │                      infrastructure fault, never charged to the URL (crawler.breaker)
        ├── BodyTooLarge       "body_too_large": the body passed --max-body-bytes (raw or decompressed)
        ├── TooManyRedirects   "too_many_redirects"
        ├── InvalidResponse    "invalid_response": unparsable status line or headers, headers too large
        ├── InvalidTarget      "invalid_url": a URL (or redirect target) the HTTP client refuses
        └── BlockedAddress     "blocked_address": a private or loopback target refused by the SSRF guard

The retry policy (`crawler.retry`) matches only these classes. Translations keep the cause (`raise ... from exc`),
so a log can show the chain while records show only the stable `kind`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # errors.py is imported by everything; fetch_base imports it
    from crawler.fetch_base import FetchResult, Hop


class CrawlError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(CrawlError):
    """Settings or input that make the command impossible; the CLI prints the message and exits 2."""


class RedisUnavailable(CrawlError):
    """The frontier's Redis cannot be reached (message carries the redacted URL, never a password)."""

    @property
    def cause_name(self) -> str:
        """The class of the translated error (ConnectionError, TimeoutError, ...), for one-line warnings."""
        return type(self.__cause__).__name__ if self.__cause__ is not None else "unreachable"


class FetchError(CrawlError):
    kind = "fetch"
    hops: tuple[Hop, ...] = ()  # the redirects answered before the failure (crawler.fetch_base.hops_on_error)


class ConnectError(FetchError):
    kind = "connect"


class FetchTimeout(FetchError):
    kind = "timeout"


class ProxyError(FetchError):
    kind = "proxy"


class ProxyAuthError(ProxyError):
    kind = "proxy_auth"


class GatewayUnreachable(ProxyError):
    kind = "gateway_down"


class BodyTooLarge(FetchError):
    """The body passed `--max-body-bytes`. `partial`, when the fetcher keeps truncated bodies (`--warc`): the
    response with its body cut at the cap (a `crawler.fetch_base.FetchResult`, `truncated=True`), for the archive."""

    kind = "body_too_large"

    def __init__(self, message: str, partial: FetchResult | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class TooManyRedirects(FetchError):
    kind = "too_many_redirects"


class InvalidResponse(FetchError):
    kind = "invalid_response"


class InvalidTarget(FetchError):
    kind = "invalid_url"


class BlockedAddress(FetchError):
    kind = "blocked_address"
