"""One exception tree; aiohttp, curl_cffi and redis errors are translated into it once, at the boundary
(`crawler.fetch.translate_errors`, `crawler.curl_client.translate_curl_errors`), keeping the cause.

    CrawlError
    ├── ConfigError            bad settings or input: one-line message, exit status 2
    ├── RedisUnavailable       the frontier cannot be reached (the worker backs off and reconnects)
    └── FetchError             one fetch attempt failed; `kind` is the stable label in records and metrics
        ├── ConnectError       "connect": refused, reset, DNS, TLS
        ├── FetchTimeout       "timeout": total or read deadline passed
        ├── ProxyError         "proxy": the gateway failed (502/504 from the gateway, tunnel refused)
        │   └── ProxyAuthError "proxy_auth": the gateway answered 407: a configuration error, never a result
        ├── BodyTooLarge       "body_too_large": the body passed --max-body-bytes (raw or decompressed)
        ├── TooManyRedirects   "too_many_redirects"
        ├── InvalidResponse    "invalid_response": unparsable status line or headers, headers too large
        ├── InvalidTarget      "invalid_url": a URL (or redirect target) the HTTP client refuses
        └── BlockedAddress     "blocked_address": a private or loopback target refused by the SSRF guard

The retry policy (`crawler.retry`) matches only these classes.
"""

from __future__ import annotations


class CrawlError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(CrawlError):
    """Settings or input that make the command impossible; the CLI prints the message and exits 2."""


class RedisUnavailable(CrawlError):
    """The frontier's Redis cannot be reached (message carries the redacted URL)."""


class FetchError(CrawlError):
    kind = "fetch"


class ConnectError(FetchError):
    kind = "connect"


class FetchTimeout(FetchError):
    kind = "timeout"


class ProxyError(FetchError):
    kind = "proxy"


class ProxyAuthError(ProxyError):
    kind = "proxy_auth"


class BodyTooLarge(FetchError):
    kind = "body_too_large"


class TooManyRedirects(FetchError):
    kind = "too_many_redirects"


class InvalidResponse(FetchError):
    kind = "invalid_response"


class InvalidTarget(FetchError):
    kind = "invalid_url"


class BlockedAddress(FetchError):
    kind = "blocked_address"
