"""A real HTTP/1.1 forward proxy for tests and benchmarks (pure asyncio streams).

Why not a mock: the crawler's proxy code path (absolute-form requests, CONNECT tunnels for HTTPS,
Basic proxy auth, residential-gateway style ``user-session-<id>`` usernames, keep-alive and connection
limits) can only be trusted if it is exercised against something that speaks the wire protocol.

Run as ``python -m tests.support.proxy_server --port 0 --user U --password P [--drop-rate F]
[--fail-rate F] [--seed N]``; it prints ``READY http://127.0.0.1:<port>`` once listening and serves
until SIGTERM/SIGINT.  ``GET /__stats`` (origin-form, no auth) returns counters as JSON, see
:meth:`ProxyServer.stats`.

Design notes:

* Bodies are streamed in 64 KiB reads and never buffered whole; chunked bodies are relayed with their
  framing intact (``Transfer-Encoding`` is passed through), which keeps the relay cheap and exact.
* Each client connection owns at most one upstream connection, reused while the origin host:port
  stays the same; a reused upstream that turns out to be stale is retried once on a fresh connection
  (only for requests without a body, which are safe to replay).
* Peak counters (client and upstream connections) exist so tests can prove a fleet-wide limit on
  simultaneous connections.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import random
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from tests.support._loop import run_loop

READ_SIZE = 64 * 1024
# StreamReader limit: the maximum size of a head we accept (the hostile server sends ~200 KiB of headers).
HEAD_LIMIT = 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
# How often a request waiting for an upstream response checks whether its client went away.
CLIENT_GONE_POLL_S = 0.5

# Hop-by-hop headers that must not be forwarded (RFC 9110 §7.6.1). Transfer-Encoding is deliberately
# absent: chunked bodies are relayed verbatim, so the header stays true on the next hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "upgrade",
    }
)

Framing = tuple[Literal["none", "length", "chunked", "eof"], int]


class BadMessage(Exception):
    """The peer sent something that is not valid HTTP/1.x."""


class RelayError(Exception):
    """Streaming a body failed; ``source`` says whether the reading side (True) or writing side failed."""

    def __init__(self, source: bool) -> None:
        super().__init__("source side failed" if source else "sink side failed")
        self.source = source


class ClientGone(Exception):
    """The client closed its connection while we were waiting on the origin."""


@dataclass
class Message:
    """A parsed request or response head; header names keep their original case for forwarding."""

    first: tuple[str, str, str]
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]

    def tokens(self, *names: str) -> set[str]:
        """Lower-cased comma-separated tokens across all headers called ``names``."""
        out: set[str] = set()
        for name in names:
            for value in self.get_all(name):
                out.update(tok.strip().lower() for tok in value.split(",") if tok.strip())
        return out


def parse_head(raw: bytes) -> Message:
    """Parse a head ending in CRLFCRLF. Latin-1 keeps arbitrary bytes round-trippable."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    while lines and lines[0] == "":  # RFC 9112 §2.2: ignore leading empty lines
        lines.pop(0)
    if not lines:
        raise BadMessage("empty head")
    parts = lines[0].split(" ", 2)
    if len(parts) == 2:  # a status line without a reason phrase
        parts.append("")
    if len(parts) != 3:
        raise BadMessage(f"bad start line {lines[0]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadMessage(f"bad header line {line!r}")
        headers.append((name, value.strip()))
    return Message((parts[0], parts[1], parts[2]), headers)


def request_framing(msg: Message) -> Framing:
    """How the request body is delimited (requests without a length have no body)."""
    te = msg.tokens("transfer-encoding")
    if te:
        if "chunked" not in te:
            raise BadMessage("unsupported transfer-encoding")
        return ("chunked", 0)
    return _content_length(msg) or ("none", 0)


def response_framing(msg: Message, request_method: str) -> Framing:
    status = _status(msg)
    if request_method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return ("none", 0)
    if msg.tokens("transfer-encoding"):
        return ("chunked", 0)
    return _content_length(msg) or ("eof", 0)


def _content_length(msg: Message) -> Framing | None:
    values = {v.strip() for v in msg.get_all("content-length")}
    if not values:
        return None
    if len(values) != 1:
        raise BadMessage("conflicting content-length")
    value = values.pop()
    if not value.isdigit():
        raise BadMessage(f"bad content-length {value!r}")
    length = int(value)
    return ("length", length) if length else ("none", 0)


def _status(msg: Message) -> int:
    try:
        return int(msg.first[1])
    except ValueError as exc:
        raise BadMessage(f"bad status {msg.first[1]!r}") from exc


def wants_keep_alive(msg: Message, version: str) -> bool:
    tokens = msg.tokens("connection", "proxy-connection")
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def simple_response(status: int, reason: str, *, keep_alive: bool, extra: str = "", body: bytes = b"") -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _read(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.read(n)
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise RelayError(source=True) from exc


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise RelayError(source=True) from exc


async def _write(writer: asyncio.StreamWriter, data: bytes, *, drain: bool = True) -> None:
    try:
        writer.write(data)
        if drain:
            await writer.drain()
    except (OSError, RuntimeError) as exc:
        raise RelayError(source=False) from exc


async def relay_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framing: Framing) -> None:
    """Stream one body from ``reader`` to ``writer`` keeping its framing; raises RelayError."""
    kind, length = framing
    if kind == "length":
        await _relay_exact(reader, writer, length)
    elif kind == "chunked":
        while True:
            line = await _readline(reader)
            await _write(writer, line, drain=False)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise RelayError(source=True) from exc
            if size == 0:  # last chunk, then trailers up to an empty line
                while (trailer := await _readline(reader)) != b"\r\n":
                    await _write(writer, trailer, drain=False)
                await _write(writer, trailer)
                return
            await _relay_exact(reader, writer, size + 2)  # chunk data + CRLF
    elif kind == "eof":
        while data := await _read(reader, READ_SIZE):
            await _write(writer, data)


async def _relay_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remaining: int) -> None:
    while remaining:
        data = await _read(reader, min(remaining, READ_SIZE))
        if not data:
            raise RelayError(source=True)
        await _write(writer, data)
        remaining -= len(data)


async def discard_body(reader: asyncio.StreamReader, framing: Framing) -> None:
    """Consume a request body we are not forwarding so the next keep-alive request parses."""
    kind, remaining = framing
    if kind == "length":
        while remaining:
            data = await _read(reader, min(remaining, READ_SIZE))
            if not data:
                raise RelayError(source=True)
            remaining -= len(data)
    elif kind == "chunked":
        while True:
            line = await _readline(reader)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise RelayError(source=True) from exc
            if size == 0:
                while await _readline(reader) != b"\r\n":
                    pass
                return
            await discard_body(reader, ("length", size + 2))


@dataclass
class ProxyStats:
    requests: int = 0
    connects: int = 0
    auth_failures: int = 0
    dropped: int = 0
    failed: int = 0
    upstream_errors: int = 0
    active_client_connections: int = 0
    peak_client_connections: int = 0
    active_tunnels_and_upstreams: int = 0
    peak_upstream_connections: int = 0
    sessions: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "connects": self.connects,
            "auth_failures": self.auth_failures,
            "dropped": self.dropped,
            "failed": self.failed,
            "upstream_errors": self.upstream_errors,
            "active_client_connections": self.active_client_connections,
            "peak_client_connections": self.peak_client_connections,
            "active_tunnels_and_upstreams": self.active_tunnels_and_upstreams,
            "peak_upstream_connections": self.peak_upstream_connections,
            "sessions": sorted(self.sessions),
        }


@dataclass
class _Upstream:
    key: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()


class _ClientConnection:
    """Per-client-connection state: the streams plus the (single) reusable upstream connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.upstream: _Upstream | None = None
        # The current request carries ``Expect: 100-continue`` and a body the client has not sent yet.
        self.expect_continue = False


class ProxyServer:
    """In-process forward proxy; the CLI wraps it. ``await start()`` returns the proxy URL."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        user: str | None = None,
        password: str | None = None,
        drop_rate: float = 0.0,
        fail_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= drop_rate + fail_rate <= 1.0:
            raise ValueError("drop_rate + fail_rate must be within [0, 1]")
        self.host = host
        self.port = port
        self.user = user
        self.password = password or ""
        self.drop_rate = drop_rate
        self.fail_rate = fail_rate
        self._rng = random.Random(seed)
        self._stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(
            self._handle_client, self.host, self.port, limit=HEAD_LIMIT, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    async def close(self) -> None:
        """Stop listening and tear down every open connection (clients, upstreams, tunnels).

        Aborting the transports makes every handler see EOF and finish on its own; only stragglers are
        cancelled (and they swallow the cancellation, see ``_handle_client``).
        """
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def stats(self) -> dict[str, Any]:
        """Counters; ``failed`` counts injected 502s only, ``upstream_errors`` counts 502s the origin caused.

        ``requests`` counts every absolute-form request received (including ones answered 407/502 or
        dropped); ``connects`` likewise for CONNECT.
        """
        return self._stats.as_json()

    # -- connection bookkeeping -------------------------------------------------------------------

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)

    def _untrack(self, writer: asyncio.StreamWriter) -> None:
        """Forget a connection and close it gracefully (buffered bytes are still flushed).

        Broken connections are aborted explicitly where the breakage is detected, so a plain close is
        right here: aborting would throw away the tail of a response still sitting in the buffer.
        """
        self._writers.discard(writer)
        writer.close()

    async def _open_upstream(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=HEAD_LIMIT), CONNECT_TIMEOUT_S
        )
        self._track(writer)
        s = self._stats
        s.active_tunnels_and_upstreams += 1
        s.peak_upstream_connections = max(s.peak_upstream_connections, s.active_tunnels_and_upstreams)
        return reader, writer

    def _close_upstream(self, writer: asyncio.StreamWriter) -> None:
        if writer in self._writers:
            self._untrack(writer)
            self._stats.active_tunnels_and_upstreams -= 1

    def _drop_upstream(self, conn: _ClientConnection) -> None:
        if conn.upstream is not None:
            self._close_upstream(conn.upstream.writer)
            conn.upstream = None

    # -- request handling -------------------------------------------------------------------------

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._track(writer)
        s = self._stats
        s.active_client_connections += 1
        s.peak_client_connections = max(s.peak_client_connections, s.active_client_connections)
        conn = _ClientConnection(reader, writer)
        try:
            while await self._serve_one(conn):
                pass
        except (RelayError, ClientGone, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels handlers. Ending normally matters on Python 3.11, whose
            # asyncio.start_server callback calls task.exception() on a cancelled task and logs a bogus error.
            pass
        finally:
            self._drop_upstream(conn)
            self._untrack(writer)
            s.active_client_connections -= 1
            self._tasks.discard(task)

    async def _serve_one(self, conn: _ClientConnection) -> bool:
        """Handle one request on a client connection; return whether to keep the connection open."""
        try:
            raw = await conn.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            conn.writer.write(simple_response(431, "Request Header Fields Too Large", keep_alive=False))
            return False
        try:
            msg = parse_head(raw)
            method, target, version = msg.first
            framing = request_framing(msg)
        except BadMessage:
            conn.writer.write(simple_response(400, "Bad Request", keep_alive=False))
            return False
        keep_alive = wants_keep_alive(msg, version)
        conn.expect_continue = "100-continue" in msg.tokens("expect") and framing[0] != "none"
        if target.startswith("/"):
            return await self._serve_local(conn, target, framing, keep_alive)
        if method == "CONNECT":
            return await self._serve_connect(conn, msg, framing, keep_alive)
        return await self._serve_forward(conn, msg, framing, keep_alive)

    async def _serve_local(self, conn: _ClientConnection, target: str, framing: Framing, keep: bool) -> bool:
        if target.split("?", 1)[0] == "/__stats":
            body = json.dumps(self.stats()).encode()
            extra = "Content-Type: application/json\r\n"
            return await self._answer(conn, framing, keep, 200, "OK", extra=extra, body=body)
        return await self._answer(conn, framing, keep, 404, "Not Found")

    async def _answer(
        self,
        conn: _ClientConnection,
        framing: Framing,
        keep: bool,
        status: int,
        reason: str,
        *,
        extra: str = "",
        body: bytes = b"",
    ) -> bool:
        """Answer a request ourselves, consuming the body we will not forward; return keep-alive.

        A client waiting for ``100 Continue`` may never send its body once it has a final answer, so
        that connection is closed instead of waiting for a body to skip.
        """
        if conn.expect_continue:
            keep = False
        else:
            await discard_body(conn.reader, framing)
        await _write(conn.writer, simple_response(status, reason, keep_alive=keep, extra=extra, body=body))
        return keep

    def _authorized(self, msg: Message) -> bool:
        """Accept ``user`` or ``user-session-<id>`` with the right password; remember session ids."""
        if self.user is None:
            return True
        value = msg.get("proxy-authorization")
        if not value:
            return False
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, sep, password = decoded.partition(":")
        if not sep or password != self.password:
            return False
        if username == self.user:
            return True
        prefix = f"{self.user}-session-"
        if username.startswith(prefix) and len(username) > len(prefix):
            self._stats.sessions.add(username[len(prefix) :])
            return True
        return False

    async def _gate(self, conn: _ClientConnection, msg: Message, framing: Framing, keep: bool) -> bool | None:
        """Auth and fault injection shared by CONNECT and forwarding.

        Returns None when the request may proceed, else the keep-alive decision for a request that was
        already answered (407/502) or dropped.
        """
        if not self._authorized(msg):
            self._stats.auth_failures += 1
            extra = 'Proxy-Authenticate: Basic realm="test"\r\n'
            return await self._answer(conn, framing, keep, 407, "Proxy Authentication Required", extra=extra)
        roll = self._rng.random()
        if roll < self.drop_rate:
            self._stats.dropped += 1
            conn.writer.close()
            return False
        if roll < self.drop_rate + self.fail_rate:
            self._stats.failed += 1
            return await self._answer(conn, framing, keep, 502, "Bad Gateway")
        return None

    async def _serve_connect(self, conn: _ClientConnection, msg: Message, framing: Framing, keep: bool) -> bool:
        self._stats.connects += 1
        gated = await self._gate(conn, msg, framing, keep)
        if gated is not None:
            return gated
        host, port = _split_authority(msg.first[1], default_port=443)
        self._drop_upstream(conn)  # the tunnel takes over this client connection
        try:
            up_reader, up_writer = await self._open_upstream(host, port)
        except (OSError, TimeoutError):
            self._stats.upstream_errors += 1
            await _write(conn.writer, simple_response(502, "Bad Gateway", keep_alive=keep))
            return keep
        try:
            await _write(conn.writer, b"HTTP/1.1 200 Connection established\r\n\r\n")
            await self._tunnel(conn.reader, conn.writer, up_reader, up_writer)
        finally:
            self._close_upstream(up_writer)
        return False

    async def _tunnel(
        self,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        u_reader: asyncio.StreamReader,
        u_writer: asyncio.StreamWriter,
    ) -> None:
        """Pipe bytes both ways; EOF is propagated as a half-close, an error tears down both sides."""

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await _read(src, READ_SIZE):
                    await _write(dst, data)
                if dst.can_write_eof():
                    dst.write_eof()
            except (RelayError, OSError):
                c_writer.transport.abort()
                u_writer.transport.abort()

        await asyncio.gather(pipe(c_reader, u_writer), pipe(u_reader, c_writer))

    async def _serve_forward(self, conn: _ClientConnection, msg: Message, framing: Framing, keep: bool) -> bool:
        self._stats.requests += 1
        gated = await self._gate(conn, msg, framing, keep)
        if gated is not None:
            return gated
        method, target, _ = msg.first
        try:
            parts = urlsplit(target)
            if parts.scheme.lower() != "http" or not parts.hostname:
                raise BadMessage(f"unsupported target {target!r}")
            key = (parts.hostname, parts.port or 80)
        except (ValueError, BadMessage):
            return await self._answer(conn, framing, keep, 400, "Bad Request")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = _upstream_request_head(method, path, msg, parts.netloc.rpartition("@")[2])

        for attempt in (0, 1):
            reused = conn.upstream is not None and conn.upstream.key == key and conn.upstream.usable()
            if not reused:
                self._drop_upstream(conn)
                try:
                    reader, writer = await self._open_upstream(*key)
                except (OSError, TimeoutError):
                    self._stats.upstream_errors += 1
                    return await self._answer(conn, framing, keep, 502, "Bad Gateway")
                conn.upstream = _Upstream(key, reader, writer)
            upstream = conn.upstream
            assert upstream is not None
            try:
                await _write(upstream.writer, head, drain=framing[0] == "none")
                if conn.expect_continue:  # we answer Expect ourselves; the origin never sees it
                    conn.expect_continue = False
                    await _write(conn.writer, b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    await relay_body(conn.reader, upstream.writer, framing)
                except RelayError as exc:
                    if exc.source:  # the client died while sending its body: nobody to answer
                        self._drop_upstream(conn)
                        return False
                    raise
                response = await self._read_response_head(conn, upstream, method)
                break
            except RelayError:
                self._drop_upstream(conn)
                if attempt == 0 and reused and framing[0] == "none":
                    continue  # stale keep-alive upstream: safe to replay a body-less request once
                self._stats.upstream_errors += 1
                await _write(conn.writer, simple_response(502, "Bad Gateway", keep_alive=False))
                return False
            except BadMessage:
                self._drop_upstream(conn)
                self._stats.upstream_errors += 1
                await _write(conn.writer, simple_response(502, "Bad Gateway", keep_alive=False))
                return False
        else:  # pragma: no cover - the loop always breaks or returns
            return False

        resp_framing = response_framing(response, method)
        resp_version = response.first[0]
        upstream_keep = wants_keep_alive(response, resp_version) and resp_framing[0] != "eof"
        client_keep = keep and resp_framing[0] != "eof"
        await _write(conn.writer, _client_response_head(response, client_keep), drain=False)
        try:
            await relay_body(upstream.reader, conn.writer, resp_framing)
        except RelayError:
            # The head is already out, so the only honest signal left is to break the connection.
            self._drop_upstream(conn)
            conn.writer.transport.abort()
            return False
        if not upstream_keep:
            self._drop_upstream(conn)
        return client_keep

    async def _read_response_head(self, conn: _ClientConnection, upstream: _Upstream, method: str) -> Message:
        """Read the final response head, forwarding 1xx interim responses, watching for client loss."""
        while True:
            raw = await self._await_upstream_head(conn, upstream)
            response = parse_head(raw)
            status = _status(response)
            if status == 101:
                raise BadMessage("upgrade not supported")
            if 100 <= status < 200:
                await _write(conn.writer, raw)
                continue
            return response

    async def _await_upstream_head(self, conn: _ClientConnection, upstream: _Upstream) -> bytes:
        task = asyncio.ensure_future(upstream.reader.readuntil(b"\r\n\r\n"))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=CLIENT_GONE_POLL_S)
                if done:
                    return task.result()
                if conn.reader.at_eof() or conn.writer.is_closing():
                    raise ClientGone()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise RelayError(source=True) from exc
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _split_authority(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):  # [v6]:port
        host, _, rest = authority[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = authority.rpartition(":")
    if not sep:
        return authority, default_port
    return host, int(port)


def _upstream_request_head(method: str, path: str, msg: Message, netloc: str) -> bytes:
    drop = HOP_BY_HOP | {"expect"} | msg.tokens("connection", "proxy-connection")
    lines = [f"{method} {path} HTTP/1.1"]
    has_host = False
    for name, value in msg.headers:
        lname = name.lower()
        if lname in drop:
            continue
        has_host = has_host or lname == "host"
        lines.append(f"{name}: {value}")
    if not has_host:
        lines.append(f"Host: {netloc}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _client_response_head(response: Message, keep_alive: bool) -> bytes:
    _, status, reason = response.first
    drop = HOP_BY_HOP | response.tokens("connection")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers if name.lower() not in drop]
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- CLI ------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default=None, help="required proxy username (no auth if omitted)")
    parser.add_argument("--password", default="")
    parser.add_argument("--drop-rate", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    return parser.parse_args(argv)


async def _amain(args: argparse.Namespace) -> None:
    server = ProxyServer(
        args.host,
        args.port,
        user=args.user,
        password=args.password,
        drop_rate=args.drop_rate,
        fail_rate=args.fail_rate,
        seed=args.seed,
    )
    url = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {url}", flush=True)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    run_loop(lambda: _amain(args), use_uvloop=not args.no_uvloop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
