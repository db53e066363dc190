"""The curl boundary: a pool of curl handles driven on the event loop (curl_cffi's AsyncCurl), one streamed
transfer at a time per handle, and the one translation of curl's errors into ours.

Why not curl_cffi's AsyncSession: it rebuilds every option of a handle for every request (impersonation
included) and parses cookies and redirect history we do not use; on loopback that doubled the CPU per page.
Here a handle is impersonated and configured once, when created, and a request sets only what changes: the
URL, the headers, the gateway, the pinned addresses, and its callbacks. The body arrives through curl's write
callback into a queue; stopping early makes that callback fail (the transfer aborts, its connection closes)
or, for a stalled transfer, removes the handle from the multi handle.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from curl_cffi import Curl, CurlError, CurlInfo, CurlOpt
from curl_cffi.aio import AsyncCurl
from curl_cffi.const import CurlECode
from curl_cffi.requests.impersonate import resolve_latest_browser_type

from crawler.errors import (
    ConfigError,
    ConnectError,
    FetchError,
    FetchTimeout,
    GatewayUnreachable,
    InvalidResponse,
    InvalidTarget,
    ProxyAuthError,
    ProxyError,
)
from crawler.fetch_base import RawHeaders

_VERSIONS = {1: "1.0", 2: "1.1", 3: "2", 30: "3"}  # CURLINFO_HTTP_VERSION -> the record's http_version
_HEADER_OUT = 2  # CURLINFO_HEADER_OUT: a request head as curl sent it, in the debug callback
_WRITE_ERROR = 0xFFFFFFFF  # CURL_WRITEFUNC_ERROR: a write callback's "stop this transfer"


def _info_int(curl: Curl, info: CurlInfo) -> int:
    value = curl.getinfo(info)
    return int(value) if isinstance(value, int | float) else 0


class Transfer:
    """One streamed GET on a pooled handle. Chunks arrive in `_queue` from curl's write callback (on the event
    loop, between our reads, so it holds at most what one socket event delivered); `head` is the response head
    once `_head_done` is set (at the end of the final header block, or when the transfer ended)."""

    def __init__(self, curl: Curl, record: bool) -> None:
        self.curl = curl
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._head_lines: list[bytes] = []
        self._head_done = asyncio.Event()
        self._complete = False  # the final head ended with its blank line (else it failed part way)
        self._stopped = False  # set when we stop reading: the next write fails
        self.sent: list[bytes] | None = [] if record else None  # request heads as curl sent them
        self.error: CurlError | None = None  # carries `connect_code`: the gateway's answer to CONNECT
        self.future: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def on_body(self, chunk: bytes) -> int:
        if self._stopped:
            return _WRITE_ERROR
        self._head_done.set()
        self._queue.put_nowait(chunk)
        return len(chunk)

    def on_header(self, line: bytes) -> int:
        if line in (b"\r\n", b"\n"):
            status = self._head_lines[0].split(None, 2)[1:2] if self._head_lines else []
            if status and not status[0].startswith(b"1"):  # 1xx heads are followed by the real one
                self._complete = True
                self._head_done.set()
            else:
                self._head_lines.clear()
        else:
            self._head_lines.append(line)
        return len(line)

    def on_debug(self, kind: int, data: bytes) -> None:
        if kind == _HEADER_OUT and self.sent is not None:
            self.sent.append(data)

    async def run(self) -> None:
        assert self.future is not None
        try:
            await self.future
        except CurlError as exc:
            exc.connect_code = _info_int(self.curl, CurlInfo.HTTP_CONNECTCODE)  # type: ignore[attr-defined]
            self.error = exc
        finally:
            self._head_done.set()
            self._queue.put_nowait(None)

    async def wait_head(self) -> None:
        await self._head_done.wait()
        if self.error is not None and not self._complete:
            raise self.error

    def head(self) -> tuple[int, str, RawHeaders]:
        """(status, reason, headers in order as received) of the final response."""
        lines = [ln.decode("latin-1").rstrip("\r\n") for ln in self._head_lines]
        status_line = lines[0].split(None, 2) if lines else []
        reason = status_line[2] if len(status_line) > 2 else ""
        headers: list[tuple[str, str]] = []
        for ln in lines[1:]:
            if ln[:1] in (" ", "\t") and headers:  # obsolete line folding
                headers[-1] = (headers[-1][0], f"{headers[-1][1]} {ln.strip()}")
                continue
            name, _, value = ln.partition(":")
            headers.append((name.strip(), value.strip()))
        status = _info_int(self.curl, CurlInfo.RESPONSE_CODE)
        return status, reason, tuple(headers)

    def http_version(self) -> str:
        return _VERSIONS.get(_info_int(self.curl, CurlInfo.HTTP_VERSION), "1.1")

    def peer_ip(self) -> str | None:
        ip = self.curl.getinfo(CurlInfo.PRIMARY_IP)
        return ip.decode() if isinstance(ip, bytes) and ip else None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body; curl's error, if the transfer failed mid-body, is raised at its end."""
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                if self.error is not None:
                    raise self.error
                return
            yield chunk

    def stop(self) -> None:
        self._stopped = True


class CurlPool:
    """At most `size` handles, each impersonated and configured once (`static` options), driven by one
    AsyncCurl on this event loop. `start` waits for a free handle (the in-flight cap, like aiohttp's
    connector limit) and returns once the response head is in."""

    def __init__(self, size: int, impersonate: str | None, static: dict[CurlOpt, Any], record: bool) -> None:
        self.size = size
        self.impersonate = impersonate
        self.static = static
        self.record = record  # capture the request heads as sent (debug callback, VERBOSE)
        self._free: asyncio.LifoQueue[Curl | None] = asyncio.LifoQueue()
        for _ in range(size):
            self._free.put_nowait(None)
        self._acurl: AsyncCurl | None = None  # made on first use, on the running loop
        self._handles: list[Curl] = []
        self.closed = False

    def _new_handle(self) -> Curl:
        curl = Curl()
        if self.impersonate is not None and curl.impersonate(self.impersonate) != 0:
            raise ConfigError(f"--impersonate {self.impersonate!r}: not a curl_cffi profile")
        for option, value in self.static.items():
            curl.setopt(option, value)
        if self.record:
            curl.setopt(CurlOpt.VERBOSE, 1)
        self._handles.append(curl)
        return curl

    async def start(
        self, url: str, headers: list[bytes], proxy: str | None, pins: list[str] | None, fresh: bool = False
    ) -> Transfer:
        """`fresh`: open a new connection (the cached one died under a reused request)."""
        curl = await self._free.get()
        try:
            curl = curl or self._new_handle()
            t = Transfer(curl, self.record)
            curl.setopt(CurlOpt.URL, url.encode())
            curl.setopt(CurlOpt.HTTPHEADER, headers)
            curl.setopt(CurlOpt.PROXY, proxy or "")  # "" also keeps curl from reading proxy variables
            curl.setopt(CurlOpt.HTTPPROXYTUNNEL, 1 if proxy and url.startswith("https:") else 0)
            # always set: the last request's list was freed with its buffers, and [] clears the option
            curl.setopt(CurlOpt.RESOLVE, pins or [])
            curl.setopt(CurlOpt.FRESH_CONNECT, 1 if fresh else 0)
            curl.setopt(CurlOpt.WRITEFUNCTION, t.on_body)
            curl.setopt(CurlOpt.HEADERFUNCTION, t.on_header)
            if self.record:
                curl.setopt(CurlOpt.DEBUGFUNCTION, t.on_debug)
            if self._acurl is None:
                self._acurl = AsyncCurl()
            t.future = self._acurl.add_handle(curl)
        except BaseException:
            self._release(curl)
            raise
        t.task = asyncio.create_task(t.run())
        try:
            await t.wait_head()
        except BaseException:
            await self.finish(t)
            raise
        return t

    async def finish(self, t: Transfer) -> None:
        """End `t` (at once if still running: its connection is closed, not drained) and free its handle."""
        t.stop()
        try:
            if t.task is not None and not t.task.done():
                if self._acurl is not None:
                    self._acurl.remove_handle(t.curl)  # out of curl's hands now; cancels run()'s future
                await asyncio.wait([t.task])
        finally:  # a second cancellation while waiting must not cost the pool a handle
            self._release(t.curl)

    def _release(self, curl: Curl | None) -> None:
        if curl is not None:
            curl.clean_handles_and_buffers()  # headers, pins and callbacks of the request; options stay
        self._free.put_nowait(curl)

    async def close(self) -> None:
        self.closed = True
        if self._acurl is not None:
            await self._acurl.close()  # type: ignore[no-untyped-call]
        for curl in self._handles:
            curl.close()
        self._handles.clear()


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
    except CurlError as exc:
        code = getattr(exc, "code", None)
        connect = int(getattr(exc, "connect_code", 0)) if via_proxy else 0
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
            raise GatewayUnreachable(f"cannot connect to the gateway (curl error {code})") from exc
        raise ConnectError(f"curl error {code}: {str(exc)[:200]}") from exc
    except TimeoutError as exc:
        raise FetchTimeout("deadline passed") from exc


STALE_CONNECTION = (55, 56)  # CURLE_SEND_ERROR, CURLE_RECV_ERROR: a kept-alive connection the peer had closed


def stale_connection(exc: BaseException) -> bool:
    """Did a request die on a reused connection before any answer (a gateway that closes idle connections)?"""
    return isinstance(exc, CurlError) and getattr(exc, "code", None) in STALE_CONNECTION


def int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
