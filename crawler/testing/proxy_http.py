"""The HTTP/1.1 wire side of the test forward proxy: heads, body framing, relaying, tunnels, Basic auth.

Why a module of its own: these are pure functions of bytes and streams, with no proxy state, so the proxy
server (``crawler.testing.proxy_server``) reads as connection handling only. Heads are decoded as Latin-1
so arbitrary bytes survive the round trip; bodies are relayed in 64 KiB reads with their framing intact.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Literal

READ_SIZE = 64 * 1024
# StreamReader limit: the maximum size of a head we accept (the hostile server sends ~200 KiB of headers).
HEAD_LIMIT = 1024 * 1024

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
    status = status_of(msg)
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


def status_of(msg: Message) -> int:
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


async def read_some(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.read(n)
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise RelayError(source=True) from exc


async def read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise RelayError(source=True) from exc


async def write(writer: asyncio.StreamWriter, data: bytes, *, drain: bool = True) -> None:
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
            line = await read_line(reader)
            await write(writer, line, drain=False)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise RelayError(source=True) from exc
            if size == 0:  # last chunk, then trailers up to an empty line
                while (trailer := await read_line(reader)) != b"\r\n":
                    await write(writer, trailer, drain=False)
                await write(writer, trailer)
                return
            await _relay_exact(reader, writer, size + 2)  # chunk data + CRLF
    elif kind == "eof":
        while data := await read_some(reader, READ_SIZE):
            await write(writer, data)


async def _relay_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remaining: int) -> None:
    while remaining:
        data = await read_some(reader, min(remaining, READ_SIZE))
        if not data:
            raise RelayError(source=True)
        await write(writer, data)
        remaining -= len(data)


async def discard_body(reader: asyncio.StreamReader, framing: Framing) -> None:
    """Consume a request body we are not forwarding so the next keep-alive request parses."""
    kind, remaining = framing
    if kind == "length":
        while remaining:
            data = await read_some(reader, min(remaining, READ_SIZE))
            if not data:
                raise RelayError(source=True)
            remaining -= len(data)
    elif kind == "chunked":
        while True:
            line = await read_line(reader)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise RelayError(source=True) from exc
            if size == 0:
                while await read_line(reader) != b"\r\n":
                    pass
                return
            await discard_body(reader, ("length", size + 2))


async def tunnel(
    c_reader: asyncio.StreamReader,
    c_writer: asyncio.StreamWriter,
    u_reader: asyncio.StreamReader,
    u_writer: asyncio.StreamWriter,
) -> None:
    """Pipe bytes both ways; EOF is propagated as a half-close, an error tears down both sides."""

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await read_some(src, READ_SIZE):
                await write(dst, data)
            if dst.can_write_eof():
                dst.write_eof()
        except (RelayError, OSError):
            c_writer.transport.abort()
            u_writer.transport.abort()

    await asyncio.gather(pipe(c_reader, u_writer), pipe(u_reader, c_writer))


def basic_auth_user(value: str | None, password: str) -> str | None:
    """The username of a ``Proxy-Authorization: Basic`` value whose password matches, else None."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, given = decoded.partition(":")
    if not sep or given != password:
        return None
    return username


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):  # [v6]:port
        host, _, rest = authority[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = authority.rpartition(":")
    if not sep:
        return authority, default_port
    return host, int(port)


def upstream_request_head(method: str, path: str, msg: Message, netloc: str) -> bytes:
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


def client_response_head(response: Message, keep_alive: bool) -> bytes:
    _, status, reason = response.first
    drop = HOP_BY_HOP | response.tokens("connection")
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers if name.lower() not in drop]
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- CLI ------------------------------------------------------------------------------------------
