"""The test proxy's upstream side: connection bookkeeping and forwarding of absolute-form requests.

Why apart from ``proxy_server``: the server decides what a request is (local, CONNECT, forward) and whether
it may pass (auth, injected faults); this module owns what happens after that. Each client connection owns
at most one upstream connection, reused while the origin host:port stays the same; a reused upstream that
turns out to be stale is retried once on a fresh connection (only for requests without a body, which are
safe to replay). Peak counters (client and upstream connections) exist so tests can prove a fleet-wide
limit on simultaneous connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from crawler.testing.proxy_http import (
    HEAD_LIMIT,
    BadMessage,
    ClientGone,
    Framing,
    Message,
    RelayError,
    client_response_head,
    discard_body,
    parse_head,
    relay_body,
    response_framing,
    simple_response,
    status_of,
    wants_keep_alive,
    write,
)

CONNECT_TIMEOUT_S = 10.0
# How often a request waiting for an upstream response checks whether its client went away.
CLIENT_GONE_POLL_S = 0.5


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
class Upstream:
    key: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()


class ClientConnection:
    """Per-client-connection state: the streams plus the (single) reusable upstream connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.upstream: Upstream | None = None
        # The current request carries ``Expect: 100-continue`` and a body the client has not sent yet.
        self.expect_continue = False


async def answer(
    conn: ClientConnection,
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
    await write(conn.writer, simple_response(status, reason, keep_alive=keep, extra=extra, body=body))
    return keep


class Connections:
    """Every open connection (clients, upstreams, tunnels), so ``close()`` can abort them all, plus the
    upstream counters of :class:`ProxyStats`."""

    def __init__(self, stats: ProxyStats) -> None:
        self.writers: set[asyncio.StreamWriter] = set()
        self._stats = stats

    def track(self, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)

    def untrack(self, writer: asyncio.StreamWriter) -> None:
        """Forget a connection and close it gracefully (buffered bytes are still flushed).

        Broken connections are aborted explicitly where the breakage is detected, so a plain close is
        right here: aborting would throw away the tail of a response still sitting in the buffer.
        """
        self.writers.discard(writer)
        writer.close()

    async def open_upstream(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=HEAD_LIMIT), CONNECT_TIMEOUT_S
        )
        self.track(writer)
        s = self._stats
        s.active_tunnels_and_upstreams += 1
        s.peak_upstream_connections = max(s.peak_upstream_connections, s.active_tunnels_and_upstreams)
        return reader, writer

    def close_upstream(self, writer: asyncio.StreamWriter) -> None:
        if writer in self.writers:
            self.untrack(writer)
            self._stats.active_tunnels_and_upstreams -= 1

    def drop_upstream(self, conn: ClientConnection) -> None:
        if conn.upstream is not None:
            self.close_upstream(conn.upstream.writer)
            conn.upstream = None

    def abort_all(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()


class Forwarder:
    """Forwards one absolute-form request upstream and its response back (the client side is already gated)."""

    def __init__(self, links: Connections, stats: ProxyStats) -> None:
        self._links = links
        self._stats = stats

    async def forward(
        self, conn: ClientConnection, key: tuple[str, int], head: bytes, method: str, framing: Framing, keep: bool
    ) -> bool:
        """Relay the request with head ``head`` to origin ``key``; return whether to keep the client connection."""
        exchanged = await self._exchange(conn, key, head, method, framing, keep)
        if isinstance(exchanged, bool):
            return exchanged
        upstream, response = exchanged
        return await self._relay_response(conn, upstream, response, method, keep)

    async def _exchange(
        self, conn: ClientConnection, key: tuple[str, int], head: bytes, method: str, framing: Framing, keep: bool
    ) -> tuple[Upstream, Message] | bool:
        """Send the request upstream and read the final response head.

        A bool is the keep-alive decision for a request that ended here (502, or a client that died while
        sending its body). A reused keep-alive upstream that turns out to be stale is replayed once on a
        fresh connection, for body-less requests only (they are safe to replay).
        """
        for attempt in (0, 1):
            reused = conn.upstream is not None and conn.upstream.key == key and conn.upstream.usable()
            if not reused:
                self._links.drop_upstream(conn)
                try:
                    reader, writer = await self._links.open_upstream(*key)
                except (OSError, TimeoutError):
                    self._stats.upstream_errors += 1
                    return await answer(conn, framing, keep, 502, "Bad Gateway")
                conn.upstream = Upstream(key, reader, writer)
            upstream = conn.upstream
            assert upstream is not None
            try:
                response = await self._send_request(conn, upstream, head, method, framing)
            except RelayError:
                self._links.drop_upstream(conn)
                if attempt == 0 and reused and framing[0] == "none":
                    continue  # stale keep-alive upstream
                return await self._bad_gateway(conn)
            except BadMessage:
                self._links.drop_upstream(conn)
                return await self._bad_gateway(conn)
            if response is None:  # the client died while sending its body: nobody to answer
                self._links.drop_upstream(conn)
                return False
            return upstream, response
        return False  # pragma: no cover - the second attempt always returns

    async def _send_request(
        self, conn: ClientConnection, upstream: Upstream, head: bytes, method: str, framing: Framing
    ) -> Message | None:
        """Write the head and relay the body upstream, then read the response head; None: the client died."""
        await write(upstream.writer, head, drain=framing[0] == "none")
        if conn.expect_continue:  # we answer Expect ourselves; the origin never sees it
            conn.expect_continue = False
            await write(conn.writer, b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            await relay_body(conn.reader, upstream.writer, framing)
        except RelayError as exc:
            if exc.source:
                return None
            raise
        return await self._read_response_head(conn, upstream, method)

    async def _bad_gateway(self, conn: ClientConnection) -> bool:
        self._stats.upstream_errors += 1
        await write(conn.writer, simple_response(502, "Bad Gateway", keep_alive=False))
        return False

    async def _relay_response(
        self, conn: ClientConnection, upstream: Upstream, response: Message, method: str, keep: bool
    ) -> bool:
        """Forward the response head and stream its body to the client; return the client keep-alive."""
        resp_framing = response_framing(response, method)
        resp_version = response.first[0]
        upstream_keep = wants_keep_alive(response, resp_version) and resp_framing[0] != "eof"
        client_keep = keep and resp_framing[0] != "eof"
        await write(conn.writer, client_response_head(response, client_keep), drain=False)
        try:
            await relay_body(upstream.reader, conn.writer, resp_framing)
        except RelayError:
            # The head is already out, so the only honest signal left is to break the connection.
            self._links.drop_upstream(conn)
            conn.writer.transport.abort()
            return False
        if not upstream_keep:
            self._links.drop_upstream(conn)
        return client_keep

    async def _read_response_head(self, conn: ClientConnection, upstream: Upstream, method: str) -> Message:
        """Read the final response head, forwarding 1xx interim responses, watching for client loss."""
        while True:
            raw = await self._await_upstream_head(conn, upstream)
            response = parse_head(raw)
            status = status_of(response)
            if status == 101:
                raise BadMessage("upgrade not supported")
            if 100 <= status < 200:
                await write(conn.writer, raw)
                continue
            return response

    async def _await_upstream_head(self, conn: ClientConnection, upstream: Upstream) -> bytes:
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
