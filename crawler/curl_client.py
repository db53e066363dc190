"""The curl_cffi boundary: a session that takes per-request curl options, the one translation of curl's errors
into ours, and what the fetcher reads of a response. `crawler.fetch_curl.CurlFetcher` is built on it.

curl_cffi sets curl options per session; the two that are per request (the SSRF guard's pinned addresses, and
the capture of the request head as sent) travel in a context variable to `CurlSession.pop_curl`, which runs in
the requesting task just before the request's options are set.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from curl_cffi import Curl, CurlInfo, CurlOpt
from curl_cffi.const import CurlECode
from curl_cffi.requests import AsyncSession, Response
from curl_cffi.requests.exceptions import RequestException
from curl_cffi.requests.impersonate import resolve_latest_browser_type

from crawler.errors import (
    ConfigError,
    ConnectError,
    FetchError,
    FetchTimeout,
    InvalidResponse,
    InvalidTarget,
    ProxyAuthError,
    ProxyError,
)
from crawler.fetch_base import RawHeaders

_VERSIONS = {1: "1.0", 2: "1.1", 3: "2", 30: "3"}  # CURLINFO_HTTP_VERSION -> the record's http_version
_HEADER_OUT = 2  # CURLINFO_HEADER_OUT: a request head as curl sent it, in a debug callback


@dataclass(slots=True)
class PerRequest:
    """The per-request curl options of the request being started in this task. curl_cffi takes curl options
    per session only, so they travel to `CurlSession.pop_curl` (same task, just before) in a context variable."""

    pins: list[str] | None  # CURLOPT_RESOLVE: the checked addresses of the host
    heads: list[bytes] | None  # request heads as sent (captured through the debug callback), when wanted


PER_REQUEST: contextvars.ContextVar[PerRequest | None] = contextvars.ContextVar("curl_request", default=None)


class CurlSession(AsyncSession[Response]):
    """An AsyncSession whose handles get this request's pins and header capture."""

    async def pop_curl(self) -> Curl:
        curl = await super().pop_curl()
        req = PER_REQUEST.get()
        if req is not None and req.pins:
            curl.setopt(CurlOpt.RESOLVE, req.pins)
        if req is not None and req.heads is not None:
            heads = req.heads

            def debug(kind: int, data: bytes) -> None:
                if kind == _HEADER_OUT:
                    heads.append(data)

            curl.setopt(CurlOpt.VERBOSE, 1)
            curl.setopt(CurlOpt.DEBUGFUNCTION, debug)
        return curl


def sent_headers(heads: list[bytes]) -> RawHeaders:
    """The site's request head among what curl sent (a gateway's CONNECT request is skipped), as pairs."""
    for head in reversed(heads):
        text = head.decode("latin-1")
        if text.startswith("CONNECT "):
            continue
        lines = text.split("\r\n")[1:]
        return tuple((k.strip(), v.strip()) for k, sep, v in (ln.partition(":") for ln in lines) if sep)
    return ()


def check_profile(name: str) -> str:
    """The curl_cffi target `name` stands for ("chrome" -> the newest Chrome); ConfigError when unknown."""
    target = str(resolve_latest_browser_type(name))  # type: ignore[no-untyped-call]
    probe = Curl()
    try:
        if probe.impersonate(target) != 0:
            raise ConfigError(f"--impersonate {name!r}: not a curl_cffi profile (chrome, firefox, safari, edge, ...)")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--impersonate {name!r}: not a curl_cffi profile ({exc})") from exc
    finally:
        probe.close()
    return target


def body_chunks(resp: Response) -> AsyncIterator[bytes]:
    """The streamed body; curl's errors mid-body are raised from here (translated by the caller)."""
    return resp.aiter_content()  # type: ignore[no-any-return, no-untyped-call]


def version_of(resp: Response) -> str:
    return _VERSIONS.get(int(resp.http_version), "1.1")


def headers_of(resp: Response) -> RawHeaders:
    return tuple((str(k), str(v)) for k, v in resp.headers.multi_items())


def parse_content_type(value: str | None) -> tuple[str, str | None]:
    """(media type lower-cased, charset) of a Content-Type value, as aiohttp reports them."""
    if not value:
        return "", None
    media, *params = value.split(";")
    charset = None
    for p in params:
        k, _, v = p.partition("=")
        if k.strip().lower() == "charset" and v.strip():
            charset = v.strip().strip('"')
    return media.strip().lower(), charset


def connect_code(exc: RequestException) -> int:
    rsp = getattr(exc, "response", None)
    infos = getattr(rsp, "infos", None) or {}
    return int(infos.get(CurlInfo.HTTP_CONNECTCODE) or 0)


_TIMEOUTS = {CurlECode.OPERATION_TIMEDOUT}
_INVALID = {CurlECode.WEIRD_SERVER_REPLY, CurlECode.TOO_LARGE, CurlECode.HTTP2, CurlECode.HTTP2_STREAM}
_BAD_URL = {CurlECode.URL_MALFORMAT, CurlECode.UNSUPPORTED_PROTOCOL}
_GATEWAY = {CurlECode.COULDNT_RESOLVE_PROXY, CurlECode.PROXY}


@contextlib.contextmanager
def translate_curl_errors(via_proxy: bool) -> Iterator[None]:
    """The one place curl's errors become ours (the cause is kept for the log; the record shows `kind`)."""
    try:
        yield
    except FetchError:
        raise
    except RequestException as exc:
        code = getattr(exc, "code", None)
        connect = connect_code(exc) if via_proxy else 0
        if connect == 407:
            raise ProxyAuthError("gateway refused the credentials (407)") from exc
        if connect >= 300:
            raise ProxyError(f"gateway answered {connect} to CONNECT") from exc
        if code in _TIMEOUTS:
            raise FetchTimeout("deadline passed") from exc
        if code in _INVALID:
            raise InvalidResponse(f"invalid response: curl error {code}") from exc
        if code in _BAD_URL:
            raise InvalidTarget(f"invalid URL: curl error {code}") from exc
        if code in _GATEWAY or (via_proxy and code == CurlECode.COULDNT_CONNECT):
            raise ProxyError("cannot connect to the gateway") from exc
        raise ConnectError(f"curl error {code}") from exc
    except TimeoutError as exc:
        raise FetchTimeout("deadline passed") from exc


async def abort_transfer(resp: Response) -> None:
    """End a streamed transfer now: the write callback fails at the next chunk, and a stalled one is removed
    from curl's multi handle (its connection closed, not drained or reused)."""
    quit_now = getattr(resp, "quit_now", None)
    if quit_now is not None:
        quit_now.set()
    task: asyncio.Task[None] | None = getattr(resp, "astream_task", None)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task])


def int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
