"""The benchmark's helper processes: origin (nginx or aiohttp static), proxy (tinyproxy or ours), Redis.

Each is a :class:`Managed` process started by this harness and stopped by its PID only; CPU accounting
(subreaper, rusage of children, psutil per process) lives here too, because it is about those processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

from benchkit import ROOT
from benchkit.site import Site
from crawler.testing.services import IN_MEMORY, PROXY_SERVER, RedisServer, stop_process
from crawler.testing.serving import bind_socket, run_prefork

PROXY_USER = "bench"
PROXY_PASSWORD = "b3nch-pr0xy-pw"
# The fallback origin is `bench.py serve-static` in its own process (pre-forked, off this process's GIL).
BENCH_SCRIPT = ROOT / "scripts" / "bench.py"


def become_subreaper() -> bool:
    """Orphaned descendants (the daemonized embedded Redis, a forkserver) are re-parented to us, so we reap them
    and their CPU lands in getrusage(RUSAGE_CHILDREN)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def proc_cpu_s(p: psutil.Process | None) -> float:
    if p is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        t = p.cpu_times()
        return float(t.user + t.system)
    return 0.0


def wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def port_free(port: int) -> bool:
    """Can nginx listen here? (SO_REUSEADDR as nginx sets it, so TIME_WAIT leftovers do not count.)"""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Managed:
    """A long-lived helper process we started (server, proxy, redis): stopped by its pid only."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, info: dict[str, Any]) -> None:
        self.name, self.proc, self.port, self.info = name, proc, port, info
        self.ps = psutil.Process(proc.pid)

    def cpu_s(self) -> float:
        """CPU of the process and its live children (nginx master + workers)."""
        total = proc_cpu_s(self.ps)
        with contextlib.suppress(psutil.Error):
            for c in self.ps.children(recursive=True):
                total += proc_cpu_s(c)
        return total

    def pids(self) -> set[int]:
        out = {self.proc.pid}
        with contextlib.suppress(psutil.Error):
            out |= {c.pid for c in self.ps.children(recursive=True)}
        return out

    def stop(self, timeout_s: float = 10.0) -> None:
        stop_process(self.proc, timeout_s)


def start_nginx(site: Site, port: int, workers: int, workdir: Path) -> Managed:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    d = workdir / "nginx"
    for sub in ("tmp", "logs"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes {workers};
worker_rlimit_nofile 30000;
daemon off;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 20000; multi_accept on; }}
http {{
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 75s; keepalive_requests 1000000;
    open_file_cache max=60000 inactive=300s; open_file_cache_valid 300s;
    types {{ text/html html; text/css css; }}
    default_type application/octet-stream;
    charset utf-8;
    gzip off;
    client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy; fastcgi_temp_path {d}/tmp/fcgi;
    uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {site.root};
        location / {{ try_files $uri =404; }}
    }}
}}
""")
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(d)],
        stdin=subprocess.DEVNULL,
        stdout=open(d / "logs" / "stdout.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise RuntimeError("nginx did not start: " + (d / "logs" / "stdout.log").read_text()[-500:]) from None
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    return Managed("nginx", proc, port, {"impl": "nginx", "version": version, "workers": workers})


def start_python_static(site: Site, port: int, processes: int, workdir: Path) -> Managed:
    log = open(workdir / "static-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_SCRIPT),
            "serve-static",
            "--root",
            str(site.root),
            "--port",
            str(port),
            "--processes",
            str(processes),
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_port(port)
    return Managed("static", proc, port, {"impl": "aiohttp static (python)", "processes": processes})


def serve_static(root: str, port: int, processes: int) -> int:
    """Fallback origin when nginx is missing: aiohttp FileResponse (sendfile), pre-forked on one socket."""
    from aiohttp import web

    def make_app() -> web.Application:
        app = web.Application()
        app.router.add_static("/", root, show_index=False, follow_symlinks=False)
        return app

    sock = bind_socket("127.0.0.1", port, backlog=4096)
    return run_prefork(make_app, sock, None, processes)


def start_tinyproxy(port: int, workdir: Path) -> Managed:
    exe = shutil.which("tinyproxy")
    if not exe:
        raise RuntimeError("tinyproxy not installed")
    d = workdir / "tinyproxy"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "tinyproxy.conf"
    conf.write_text(f"""
Port {port}
Listen 127.0.0.1
Timeout 120
MaxClients 4096
Allow 127.0.0.1
BasicAuth {PROXY_USER} {PROXY_PASSWORD}
DisableViaHeader Yes
XTinyproxy No
LogLevel Error
LogFile "{d}/tinyproxy.log"
PidFile "{d}/tinyproxy.pid"
""")
    proc = subprocess.Popen(
        [exe, "-d", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=open(d / "stdout.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    wait_port(port)
    version = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.strip()
    return Managed("proxy", proc, port, {"impl": "tinyproxy", "version": version})


def start_python_proxy(port: int, workdir: Path) -> Managed:
    log = open(workdir / "proxy-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            PROXY_SERVER,
            "--port",
            str(port),
            "--user",
            PROXY_USER,
            "--password",
            PROXY_PASSWORD,
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_port(port)
    return Managed("proxy", proc, port, {"impl": f"{PROXY_SERVER} (asyncio)"})


def check_proxy(proxy_port: int, url: str) -> None:
    """The proxy must refuse us without credentials and serve the page with them."""

    def get(auth: bool) -> int:
        proxy = (
            f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy_port}" if auth else f"http://127.0.0.1:{proxy_port}"
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
        try:
            with opener.open(url, timeout=10) as r:
                r.read()
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    if get(False) != 407:
        raise RuntimeError("the proxy answered without credentials: auth is not on")
    status = get(True)
    if status != 200:
        raise RuntimeError(f"the proxy answered {status} for {url} with credentials")


def start_redis(workdir: Path, name: str) -> Managed:
    """A separate in-memory redis-server (no AOF, no RDB: the frontier, not the disk) under ``workdir/name``."""
    redis = RedisServer(workdir / name, config=IN_MEMORY)
    redis.start()
    assert redis.proc is not None
    return Managed("redis", redis.proc, redis.port, {"url": redis.url})
