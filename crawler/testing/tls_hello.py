"""A TLS server that reads each client's ClientHello and computes its JA3 and JA4 fingerprints (stdlib only).

Why: anti-bot edges judge a client by its ClientHello before any HTTP byte; a test of `--impersonate` must see
the same bytes they see. The server peeks at the hello (MSG_PEEK, so the bytes stay for the handshake), records
it, then completes TLS with the given certificate (ALPN http/1.1 only) and answers every request with a small
HTML page, so a client that trusts the CA gets a normal 200. A client that does not trust it still leaves its
hello behind.

    with HelloServer(certfile, keyfile) as server:   # server.url == "https://localhost:<port>"
        ...
        hello = server.hellos[-1]; hello.ja3, hello.ja4, hello.alpn, hello.has_grease

JA3 (Salesforce): "version,ciphers,extensions,groups,point_formats", decimal, dash-joined, GREASE removed; its
MD5 is the usual form. JA4 (FoxIO, TCP): a_b_c with a = "t" + TLS version + "d"/"i" (SNI) + cipher count +
extension count + first/last character of the first ALPN value; b = SHA-256 (12 hex) of the sorted cipher hex
values; c = SHA-256 (12 hex) of the sorted extension hex values without SNI and ALPN, "_", and the signature
algorithms in their order. Run as ``python -m crawler.testing.tls_hello --cert C --key K`` to print hellos.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

_HANDSHAKE = 22
_CLIENT_HELLO = 1
EXT_SNI = 0x0000
EXT_GROUPS = 0x000A
EXT_POINT_FORMATS = 0x000B
EXT_SIG_ALGS = 0x000D
EXT_ALPN = 0x0010
EXT_VERSIONS = 0x002B
_VERSION_NAMES = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}
_PEEK_LIMIT = 64 * 1024


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values: 0x0a0a, 0x1a1a, ... 0xfafa."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The fields of one ClientHello that fingerprints are made of, in wire order."""

    legacy_version: int
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]
    groups: tuple[int, ...] = ()
    point_formats: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()
    supported_versions: tuple[int, ...] = ()
    alpn: tuple[str, ...] = ()
    sni: str | None = None

    @property
    def has_grease(self) -> bool:
        return any(map(is_grease, self.ciphers + self.extensions + self.groups + self.supported_versions))

    @property
    def ja3_string(self) -> str:
        def dec(values: tuple[int, ...]) -> str:
            return "-".join(str(v) for v in values if not is_grease(v))

        parts = (self.ciphers, self.extensions, self.groups, self.point_formats)
        return ",".join([str(self.legacy_version), *(dec(p) for p in parts)])

    @property
    def ja3(self) -> str:
        return hashlib.md5(self.ja3_string.encode(), usedforsecurity=False).hexdigest()

    @property
    def ja4(self) -> str:
        ciphers = [c for c in self.ciphers if not is_grease(c)]
        exts = [e for e in self.extensions if not is_grease(e)]
        versions = [v for v in self.supported_versions if not is_grease(v)]
        version = _VERSION_NAMES.get(max(versions) if versions else self.legacy_version, "00")
        first = self.alpn[0] if self.alpn else ""
        alpn = (first[0] + first[-1]) if first and first.isascii() and first.isprintable() else "00"
        a = f"t{version}{'d' if self.sni else 'i'}{min(len(ciphers), 99):02d}{min(len(exts), 99):02d}{alpn}"
        b = _sha12(",".join(sorted(f"{c:04x}" for c in ciphers))) if ciphers else "0" * 12
        kept = sorted(f"{e:04x}" for e in exts if e not in (EXT_SNI, EXT_ALPN))
        sigs = ",".join(f"{s:04x}" for s in self.signature_algorithms)
        c = _sha12(",".join(kept) + (f"_{sigs}" if sigs else "")) if kept else "0" * 12
        return f"{a}_{b}_{c}"


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def vec(self, width: int) -> _Reader:
        n = self.u8() if width == 1 else self.u16()
        return _Reader(self.take(n))

    def u16s(self) -> tuple[int, ...]:
        return tuple(struct.unpack(f"!{len(self.data) // 2}H", self.data[: len(self.data) // 2 * 2]))

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def handshake_message(records: bytes) -> bytes | None:
    """The first handshake message carried by TLS records `records`; None while incomplete (the message may
    span records). ValueError when this is not a TLS handshake at all."""
    payload = bytearray()
    pos = 0
    while pos + 5 <= len(records):
        ctype, _version, length = struct.unpack("!BHH", records[pos : pos + 5])
        if ctype != _HANDSHAKE:
            raise ValueError(f"not a TLS handshake record (type {ctype})")
        if pos + 5 + length > len(records):
            return None
        payload += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(payload) >= 4:
            need = 4 + int.from_bytes(payload[1:4], "big")
            if len(payload) >= need:
                return bytes(payload[:need])
    return None


def parse_client_hello(message: bytes) -> ClientHello:
    """A handshake message (type, 3-byte length, body) -> ClientHello; ValueError when it is not one."""
    r = _Reader(message)
    if r.u8() != _CLIENT_HELLO:
        raise ValueError("not a ClientHello")
    r = _Reader(r.take(int.from_bytes(r.take(3), "big")))
    legacy_version = r.u16()
    r.take(32)  # random
    r.vec(1)  # legacy session id
    ciphers = r.vec(2).u16s()
    r.vec(1)  # compression methods
    fields: dict[str, object] = {}
    extensions: list[int] = []
    exts = r.vec(2) if not r.done else _Reader(b"")
    while not exts.done:
        etype = exts.u16()
        body = exts.vec(2)
        extensions.append(etype)
        _extension(etype, body, fields)
    return ClientHello(legacy_version, ciphers, tuple(extensions), **fields)  # type: ignore[arg-type]


def _extension(etype: int, body: _Reader, out: dict[str, object]) -> None:
    if etype == EXT_SNI:
        server_names = body.vec(2)
        if server_names.u8() == 0:  # host_name
            out["sni"] = server_names.vec(2).data.decode("ascii", "replace")
    elif etype == EXT_GROUPS:
        out["groups"] = body.vec(2).u16s()
    elif etype == EXT_POINT_FORMATS:
        out["point_formats"] = tuple(body.vec(1).data)
    elif etype == EXT_SIG_ALGS:
        out["signature_algorithms"] = body.vec(2).u16s()
    elif etype == EXT_VERSIONS:
        out["supported_versions"] = body.vec(1).u16s()
    elif etype == EXT_ALPN:
        protos = body.vec(2)
        names: list[str] = []
        while not protos.done:
            names.append(protos.vec(1).data.decode("ascii", "replace"))
        out["alpn"] = tuple(names)


def peek_client_hello(sock: socket.socket, timeout_s: float = 5.0) -> ClientHello:
    """Wait for a whole ClientHello on `sock` without consuming it (the TLS handshake reads it afterwards)."""
    deadline = time.monotonic() + timeout_s
    size = 0
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(_PEEK_LIMIT, socket.MSG_PEEK)
        if not data:
            raise ValueError("connection closed before a ClientHello")
        message = handshake_message(data)
        if message is not None:
            return parse_client_hello(message)
        if len(data) == size and time.monotonic() > deadline:
            raise TimeoutError("no whole ClientHello in time")
        size = len(data)
        time.sleep(0.005)  # MSG_PEEK returns at once while the rest is in flight: poll until whole


@dataclass
class HelloServer:
    """TLS on 127.0.0.1 (a free port) in a thread; records every ClientHello in `hellos`, in arrival order."""

    certfile: str
    keyfile: str
    host: str = "127.0.0.1"
    body: bytes = b"<!DOCTYPE html><html><head><title>hello</title></head><body>ok</body></html>"
    hellos: list[ClientHello] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # hellos that could not be parsed, handshakes that failed

    def __post_init__(self) -> None:
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(self.certfile, self.keyfile)
        self._ctx.set_alpn_protocols(["http/1.1"])
        self._sock = socket.create_server((self.host, 0))
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-hello", daemon=True)
        self._seen = threading.Condition()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def __enter__(self) -> HelloServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self._stop.set()  # the serving thread sees it within one accept timeout and closes the socket itself
        self._thread.join(5)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[ClientHello]:
        """The hellos once at least `count` arrived (a client's request returns before the thread records)."""
        with self._seen:
            self._seen.wait_for(lambda: len(self.hellos) >= count, timeout_s)
            return list(self.hellos)

    def _serve(self) -> None:
        with self._sock:
            self._sock.settimeout(0.1)
            while not self._stop.is_set():
                try:
                    conn, _ = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    self._record(None, f"accept: {exc}")
                    return
                threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            try:
                hello = peek_client_hello(conn)
            except (ValueError, OSError, struct.error) as exc:
                self._record(None, f"hello: {exc}")
                return
            self._record(hello, None)
            try:
                conn.settimeout(5)
                with self._ctx.wrap_socket(conn, server_side=True) as tls:
                    self._answer(tls)
            except (ssl.SSLError, OSError) as exc:
                self._record(None, f"handshake: {exc}")

    def _record(self, hello: ClientHello | None, error: str | None) -> None:
        with self._seen:
            if hello is not None:
                self.hellos.append(hello)
            if error is not None:
                self.errors.append(error)
            self._seen.notify_all()

    def _answer(self, tls: ssl.SSLSocket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < _PEEK_LIMIT:
            chunk = tls.recv(4096)
            if not chunk:
                return
            head += chunk
        tls.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            + f"Content-Length: {len(self.body)}\r\n\r\n".encode()
            + self.body
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the JA3/JA4 of every TLS client that connects.")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    with HelloServer(args.cert, args.key) as server:
        print(f"READY {server.url}", flush=True)
        seen = 0
        while True:
            hellos = server.wait_for(seen + 1, timeout_s=3600)
            for h in hellos[seen:]:
                print(f"ja3={h.ja3} ja4={h.ja4} alpn={','.join(h.alpn)} grease={h.has_grease}", flush=True)
            seen = len(hellos)


if __name__ == "__main__":
    sys.exit(main())
