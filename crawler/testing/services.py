"""Local services for tests, benchmarks and the demo: free ports, polling, stopping by PID, a real
redis-server, and the test HTTP servers (site, proxy, hostile) as subprocesses.

Why one module: the test suite, ``scripts/bench*.py``, ``scripts/scale.py`` and ``scripts/demo.py`` all need
the same few services, and each copy used to drift on its own. It is installed with the library (like
aiohttp's ``test_utils``), so scripts import it with no path edits.

Why subprocesses: the crawler is tested as a separate process talking over real sockets, and the servers
must not share its event loop or GIL (a busy server would otherwise distort timings).

Usage::

    redis = RedisServer(tmp / "redis")
    redis.start()  # redis.url; redis.stop() (SIGTERM by PID) in a finally block
    with start_server(SITE_SERVER, "--port", 0, "--pages", 60) as site:
        ...  # site.url, site.stats()

Every started HTTP server is also stopped at interpreter exit, so a crashing test does not leak processes.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from crawler.embedded import redis_server_binary

# The directory that holds this copy of the ``crawler`` package: a server started with ``python -m`` from
# there imports the same copy as its parent (a checkout, or site-packages after ``pip install .``).
IMPORT_ROOT = Path(__file__).resolve().parents[2]
STDOUT_TAIL_LINES = 200
SITE_SERVER = "crawler.testing.site_server"
PROXY_SERVER = "crawler.testing.proxy_server"
HOSTILE_SERVER = "crawler.testing.hostile_server"

# The test Redis keeps its data across stop/start (the outage tests restart it): AOF, fsync on every write.
DURABLE = ("--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction")
# Benchmarks measure the frontier, not the disk: no AOF, no RDB.
IN_MEMORY = ("--appendonly", "no", "--save", "", "--maxmemory-policy", "noeviction")

T = TypeVar("T")


class ServerStartError(RuntimeError):
    """The server exited or did not print ``READY <url>`` in time; the message includes its stderr."""


class RunningServer:
    """A started server subprocess: ``url``, ``proc``, ``stats()``, ``stop()``; also a context manager."""

    def __init__(
        self,
        url: str,
        proc: subprocess.Popen[bytes],
        stderr_path: Path,
        stdout_lines: list[str],
        reader: threading.Thread,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.url = url
        self.proc = proc
        self.stderr_path = stderr_path
        self.stdout_lines = stdout_lines  # the tail of stdout after READY, kept by the reader thread
        self._reader = reader
        self._ssl_context = ssl_context

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")
        return ""

    def stats(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """GET ``<url>/__stats`` directly (bypassing any proxy environment variables)."""
        return fetch_json(f"{self.url}/__stats", timeout_s=timeout_s, ssl_context=self._ssl_context)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM the server's pid, wait up to ``timeout_s``, then SIGKILL that pid; return the exit code."""
        _RUNNING.discard(self)
        stop_process(self.proc, timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._reader.join(timeout=1.0)
        with contextlib.suppress(OSError):
            self.stderr_path.unlink()
        return self.proc.returncode

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningServer(url={self.url!r}, pid={self.proc.pid})"


_RUNNING: set[RunningServer] = set()


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to a process we started (by its PID), wait up to ``timeout_s``, then SIGKILL it.

    Only ever the one process: what it started itself is its own business (the pre-forked servers forward
    the signal to their workers).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=timeout_s)


class RedisServer:
    """A real redis-server on 127.0.0.1:<free port>, started and stopped by PID (``start()`` / ``stop()``).

    ``config`` is the server's persistence and memory settings (:data:`DURABLE` by default, so stop/start
    keeps the data); the port, bind address and directory always come last, so they win. Its log is
    ``<directory>/redis.log``.
    """

    def __init__(self, directory: Path, password: str | None = None, *, config: Sequence[str] = DURABLE) -> None:
        self.dir = directory
        self.port = free_port()
        self.password = password
        self.config = tuple(config)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server (again, on the same port and directory) and return once it answers PONG."""
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--loglevel", "warning", *self.config]
        args += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        proc = self.proc
        try:
            wait_until(lambda: self._pong() or proc.poll() is not None, timeout_s)
        except TimeoutError:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"redis-server did not answer within {timeout_s} s") from None
        if proc.poll() is not None:
            self.proc = None
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {self.dir / 'redis.log'}")

    def _pong(self) -> bool:
        """PING over a raw socket (AUTH first when there is a password): no client library needed."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        """Send ``sig`` to the server's PID (SIGKILL after ``timeout_s``); a no-op when it is not running."""
        if self.proc is not None:
            stop_process(self.proc, timeout_s, sig)
        self.proc = None

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid})"


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout_s=3.0)


def start_server(
    module: str,
    *args: object,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 20.0,
    ssl_context: ssl.SSLContext | None = None,
) -> RunningServer:
    """Launch ``python -m <module> <args>`` from :data:`IMPORT_ROOT` and wait for its ``READY <url>`` line.

    ``ssl_context`` is used by :meth:`RunningServer.stats` for https servers (default: unverified, the
    servers are local test fixtures).
    """
    cmd = [sys.executable, "-m", module, *(str(a) for a in args)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    fd, stderr_name = tempfile.mkstemp(prefix=f"{module.rsplit('.', 1)[-1]}-", suffix=".stderr")
    stderr_path = Path(stderr_name)
    with os.fdopen(fd, "wb") as stderr_file:
        proc = subprocess.Popen(
            cmd,
            cwd=IMPORT_ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            stdin=subprocess.DEVNULL,
        )
    reader = _StdoutReader(proc, f"{module}-stdout")
    try:
        url = reader.ready_url(timeout_s)
    except _NotReady as exc:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stderr = stderr_path.read_text(errors="replace")
        with contextlib.suppress(OSError):
            stderr_path.unlink()
        raise ServerStartError(
            f"{' '.join(cmd)}: {exc} (exit code {proc.returncode})\n--- stderr ---\n{stderr}"
        ) from None
    server = RunningServer(url, proc, stderr_path, reader.tail, reader.thread, ssl_context)
    _RUNNING.add(server)
    return server


class _NotReady(Exception):
    """No READY line: the reason, for :class:`ServerStartError`."""


class _StdoutReader:
    """Reads a server's stdout in a thread: lines are handed over until READY, then only a tail is kept, so a
    chatty server never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        self._proc = proc
        self._lines: queue.Queue[str | None] = queue.Queue()  # lines before READY; None at EOF
        self.tail: list[str] = []  # the last STDOUT_TAIL_LINES lines after READY
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self._proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for raw in self._proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if self._ready.is_set():
                    self.tail.append(line)
                    del self.tail[:-STDOUT_TAIL_LINES]
                else:
                    self._lines.put(line)
        self._lines.put(None)

    def ready_url(self, timeout_s: float) -> str:
        """The URL of the ``READY <url>`` line; :class:`_NotReady` on EOF first or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _NotReady(f"no READY line within {timeout_s}s; stdout so far: {seen!r}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise _NotReady(f"exited before READY; stdout: {seen!r}")
            if line.startswith("READY "):
                self._ready.set()
                return line.split(" ", 1)[1].strip()
            seen.append(line)


def fetch_json(url: str, *, timeout_s: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """GET a JSON document with urllib, ignoring ``*_PROXY`` environment variables."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if url.startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=ssl_context or ssl._create_unverified_context()))
    opener = urllib.request.build_opener(*handlers)
    with opener.open(url, timeout=timeout_s) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature; prefer ``--port 0`` where a server takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s (last value {value!r})")
        time.sleep(interval_s)


class _ThreadedHTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops connections at 64 in flight (1 s SYN retries)
    daemon_threads = True


@contextlib.contextmanager
def serve_in_thread(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stdlib HTTP server on 127.0.0.1 (free port) in a thread of this process, for tests whose site is a few
    lines of `do_GET`; yields its base URL, shuts it down on exit."""
    server = _ThreadedHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class SiteHandler(BaseHTTPRequestHandler):
    """A quiet request handler for `serve_in_thread` sites: `reply` sends one complete response."""

    def reply(self, status: int, body: bytes, content_type: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
