"""Shared plumbing for the aiohttp-based test servers: socket binding, serving, pre-fork workers.

Why a pre-bound socket: with ``--port 0`` the port must be known before anything serves, and several
forked workers must share one listening socket so a benchmark can use more than one CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from aiohttp import web

from crawler.testing.loop import run_loop

# Handlers still running at shutdown (e.g. /hang, /infinite) get this long before being cancelled.
SHUTDOWN_TIMEOUT_S = 1.0
PARENT_POLL_S = 1.0


def bind_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def server_ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def socket_url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    return f"{'https' if tls else 'http'}://{host}:{port}"


async def serve_app(
    app: web.Application,
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    *,
    ready_line: str | None = None,
    watch_parent: int | None = None,
    runner_kwargs: dict[str, Any] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT (or until the parent pid ``watch_parent`` dies).

    Watching the parent keeps forked workers from outliving a parent that was SIGKILLed.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, **(runner_kwargs or {}))
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=ssl_context, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_line is not None:
        print(ready_line, flush=True)
    try:
        if watch_parent is None:
            await stop.wait()
        else:
            while not stop.is_set() and os.getppid() == watch_parent:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PARENT_POLL_S)
    finally:
        await runner.cleanup()


def run_prefork(
    make_app: Callable[[], web.Application],
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    processes: int,
    *,
    use_uvloop: bool = True,
    runner_kwargs: dict[str, Any] | None = None,
) -> int:
    """Serve ``make_app()`` on ``sock`` with ``processes`` forked workers; print ``READY <url>`` once they are forked.

    One process serves in place (no fork). See :func:`fork_workers` for how the workers are supervised.
    """
    url = socket_url(sock, ssl_context is not None)
    if processes <= 1:
        ready = f"READY {url}"
        run_loop(
            lambda: serve_app(make_app(), sock, ssl_context, ready_line=ready, runner_kwargs=runner_kwargs),
            use_uvloop=use_uvloop,
        )
        return 0
    parent = os.getpid()

    def serve_child(_index: int) -> None:
        run_loop(
            lambda: serve_app(make_app(), sock, ssl_context, watch_parent=parent, runner_kwargs=runner_kwargs),
            use_uvloop=use_uvloop,
        )

    return fork_workers(processes, serve_child, f"READY {url}", close_in_parent=[sock])


def fork_workers(
    processes: int,
    serve_child: Callable[[int], None],
    ready_line: str,
    *,
    close_in_parent: Sequence[socket.socket] = (),
) -> int:
    """Fork ``processes`` workers that each run ``serve_child(index)``, print ``ready_line``, supervise them.

    The parent owns no event loop (forking after creating one is unsafe) and closes its copies of the
    listening sockets; it forwards SIGTERM/SIGINT to its workers and waits for them. If a worker dies on its
    own the rest are stopped and the exit status is 1, so a broken server is noticed rather than silently
    running at reduced capacity. A worker should watch its parent (``serve_app(watch_parent=...)``) so that
    it does not outlive a parent that was SIGKILLed.
    """
    children: list[int] = []
    for index in range(processes):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(serve_child, index)
        children.append(pid)
    for sock in close_in_parent:
        sock.close()
    return _supervise(children, ready_line)


def _run_child(serve_child: Callable[[int], None], index: int) -> NoReturn:
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        serve_child(index)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _supervise(children: list[int], ready_line: str) -> int:
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(ready_line, flush=True)

    status = 0
    remaining = set(children)
    while remaining:
        pid, wait_status = os.waitpid(-1, 0)  # PEP 475: retried after the signal handler runs
        if pid not in remaining:
            continue
        remaining.discard(pid)
        if not stopping and os.waitstatus_to_exitcode(wait_status) != 0:
            status = 1
            forward(signal.SIGTERM, None)
    return status
