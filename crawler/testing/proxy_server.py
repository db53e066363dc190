"""A real HTTP/1.1 forward proxy for tests and benchmarks (pure asyncio streams).

Why not a mock: the crawler's proxy code path (absolute-form requests, CONNECT tunnels for HTTPS,
Basic proxy auth, residential-gateway style ``user-session-<id>`` usernames, keep-alive and connection
limits) can only be trusted if it is exercised against something that speaks the wire protocol.

Run as ``python -m crawler.testing.proxy_server --port 0 --user U --password P [--drop-rate F]
[--fail-rate F] [--seed N]``; it prints ``READY http://127.0.0.1:<port>`` once listening and serves
until SIGTERM/SIGINT.  ``GET /__stats`` (origin-form, no auth) returns counters as JSON, see
:meth:`ProxyServer.stats`.

Design notes:

* This module: what a request is (local ``/__stats``, CONNECT, forward) and whether it may pass (Basic
  auth, injected drops and 502s). ``proxy_http`` holds the wire format (heads, framing, relaying, tunnels);
  ``proxy_upstream`` the upstream connections and the forwarding of absolute-form requests.
* Bodies are streamed in 64 KiB reads and never buffered whole; chunked bodies are relayed with their
  framing intact (``Transfer-Encoding`` is passed through), which keeps the relay cheap and exact.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
from typing import Any
from urllib.parse import urlsplit

from crawler.testing.loop import run_loop
from crawler.testing.proxy_http import (
    HEAD_LIMIT,
    BadMessage,
    ClientGone,
    Framing,
    Message,
    RelayError,
    basic_auth_user,
    parse_head,
    request_framing,
    simple_response,
    split_authority,
    tunnel,
    upstream_request_head,
    wants_keep_alive,
    write,
)
from crawler.testing.proxy_upstream import ClientConnection, Connections, Forwarder, ProxyStats, answer


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
        self._links = Connections(self._stats)
        self._forwarder = Forwarder(self._links, self._stats)
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
        self._links.abort_all()
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

    # -- request handling -------------------------------------------------------------------------

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._links.track(writer)
        s = self._stats
        s.active_client_connections += 1
        s.peak_client_connections = max(s.peak_client_connections, s.active_client_connections)
        conn = ClientConnection(reader, writer)
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
            self._links.drop_upstream(conn)
            self._links.untrack(writer)
            s.active_client_connections -= 1
            self._tasks.discard(task)

    async def _serve_one(self, conn: ClientConnection) -> bool:
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

    async def _serve_local(self, conn: ClientConnection, target: str, framing: Framing, keep: bool) -> bool:
        if target.split("?", 1)[0] == "/__stats":
            body = json.dumps(self.stats()).encode()
            extra = "Content-Type: application/json\r\n"
            return await answer(conn, framing, keep, 200, "OK", extra=extra, body=body)
        return await answer(conn, framing, keep, 404, "Not Found")

    def _authorized(self, msg: Message) -> bool:
        """Accept ``user`` or ``user-session-<id>`` with the right password; remember session ids."""
        if self.user is None:
            return True
        username = basic_auth_user(msg.get("proxy-authorization"), self.password)
        if username is None:
            return False
        if username == self.user:
            return True
        prefix = f"{self.user}-session-"
        if username.startswith(prefix) and len(username) > len(prefix):
            self._stats.sessions.add(username[len(prefix) :])
            return True
        return False

    async def _gate(self, conn: ClientConnection, msg: Message, framing: Framing, keep: bool) -> bool | None:
        """Auth and fault injection shared by CONNECT and forwarding.

        Returns None when the request may proceed, else the keep-alive decision for a request that was
        already answered (407/502) or dropped.
        """
        if not self._authorized(msg):
            self._stats.auth_failures += 1
            extra = 'Proxy-Authenticate: Basic realm="test"\r\n'
            return await answer(conn, framing, keep, 407, "Proxy Authentication Required", extra=extra)
        roll = self._rng.random()
        if roll < self.drop_rate:
            self._stats.dropped += 1
            conn.writer.close()
            return False
        if roll < self.drop_rate + self.fail_rate:
            self._stats.failed += 1
            return await answer(conn, framing, keep, 502, "Bad Gateway")
        return None

    async def _serve_connect(self, conn: ClientConnection, msg: Message, framing: Framing, keep: bool) -> bool:
        self._stats.connects += 1
        gated = await self._gate(conn, msg, framing, keep)
        if gated is not None:
            return gated
        host, port = split_authority(msg.first[1], default_port=443)
        self._links.drop_upstream(conn)  # the tunnel takes over this client connection
        try:
            up_reader, up_writer = await self._links.open_upstream(host, port)
        except (OSError, TimeoutError):
            self._stats.upstream_errors += 1
            await write(conn.writer, simple_response(502, "Bad Gateway", keep_alive=keep))
            return keep
        try:
            await write(conn.writer, b"HTTP/1.1 200 Connection established\r\n\r\n")
            await tunnel(conn.reader, conn.writer, up_reader, up_writer)
        finally:
            self._links.close_upstream(up_writer)
        return False

    async def _serve_forward(self, conn: ClientConnection, msg: Message, framing: Framing, keep: bool) -> bool:
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
            return await answer(conn, framing, keep, 400, "Bad Request")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = upstream_request_head(method, path, msg, parts.netloc.rpartition("@")[2])

        return await self._forwarder.forward(conn, key, head, method, framing, keep)


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
