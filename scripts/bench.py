#!/usr/bin/env python3
"""Side-by-side crawl benchmark: `crawl` vs a bare aiohttp loop vs Scrapy + scrapy-redis, in one run.

What it does, in order:

1. Generates (once, cached) a deterministic static site of `--pages` pages (20-80 KB each, 20-50 links per page:
   plain, with fragments, absolute, relative, repeated, query pages with reordered parameters, 404s, off-site,
   mailto/javascript) under `--cache-dir`, and computes by BFS the exact set of URLs reachable from page 0.
2. Serves it with nginx (`--server nginx`, falls back to a pre-forked aiohttp static server) and puts an
   authenticating forward proxy in front (tinyproxy with BasicAuth, falling back to the repo's
   `tests.support.proxy_server`).
3. Runs each contender `--runs` times, interleaved (run 1 of every contender, then run 2, ...), each crawling the
   whole site from page 0 through the proxy, with link following and dedup:
     crawl-run     `crawl run` on the embedded Redis (fresh --home)
     crawl-worker  `crawl worker --until-idle` against a separate redis-server
     bare-pool     scripts/bare_loop.py, parsing in a ProcessPoolExecutor
     bare-inline   scripts/bare_loop.py, parsing on the event loop (reference)
     scrapy        Scrapy + scrapy-redis (scripts/scrapy_bench/)
   and measures wall time, pages found (checked URL by URL against the BFS), CPU seconds of the contender's whole
   process tree plus the Redis server it uses, and peak RSS (main process; whole tree).
4. Optionally profiles one `crawl worker` pass with py-spy (not timed) and summarises self time by function and
   by area (parsing, URL normalisation, aiohttp, redis, json, event loop, ...).
5. Prints a Markdown table (medians) and writes JSON to `--out` (default bench-out/).

CPU accounting: this process makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so every process a
contender starts, even the daemonized embedded redis-server, is eventually reaped either by its parent or by us;
the contender's CPU is then the delta of getrusage(RUSAGE_CHILDREN) around its run, plus the psutil CPU delta of
a separate redis-server it talks to. psutil sampling (every 0.1 s) gives peak RSS and a cross-check.

Quick look: `python scripts/bench.py --runs 1 --pages 5000`; full: `python scripts/bench.py` (20,000 pages, 3 runs).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import html
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SITE_FORMAT = 3  # bump when the generator's output changes: invalidates cached sites
PROXY_USER = "bench"
PROXY_PASSWORD = "b3nch-pr0xy-pw"
CONTENDERS = ("crawl-run", "crawl-worker", "bare-pool", "bare-inline", "scrapy")
OPTIONAL_CONTENDERS = ("scrapy-mem",)  # reference only: Scrapy with its in-memory scheduler (no Redis)
SAMPLE_S = 0.1

# ------------------------------------------------------------------------------------------------ the site

# (kind, weight). "repeat" repeats an earlier link of the same page verbatim; "anchor" is an in-page "#top".
LINK_KINDS: tuple[tuple[str, int], ...] = (
    ("plain", 44),
    ("fragment", 10),
    ("absolute", 8),
    ("relative", 8),
    ("repeat", 6),
    ("query", 4),
    ("query_reordered", 4),
    ("missing", 3),
    ("offsite", 4),
    ("mailto", 2),
    ("javascript", 2),
    ("anchor", 2),
)
OFFSITE = ("http://offsite.invalid/", "https://example.com/out/")
_WORDS = (
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "crawler",
    "frontier",
    "politeness",
    "robots",
    "canonical",
    "fetch",
    "parse",
    "queue",
    "shard",
    "lease",
    "ack",
    "redis",
    "worker",
    "gateway",
    "proxy",
    "session",
    "request",
    "response",
    "header",
    "body",
    "chunk",
    "stream",
    "latency",
    "throughput",
    "backlog",
    "café",
    "naïve",
    "über",
    "déjà",
    "señor",
    "smörgåsbord",
)


@dataclass(frozen=True)
class Plan:
    """The site's structure, independent of the port it is served on."""

    pages: int
    seed: int
    orphans: frozenset[int]
    links: list[list[tuple[str, int]]]  # per page: (kind, target) in document order
    sizes: list[int]  # target size in bytes per page

    @property
    def q_range(self) -> int:  # /q/<j>.html exists for j < q_range (same content as /p/<j>.html)
        return max(1, self.pages // 20)

    @property
    def missing_range(self) -> int:  # /missing/<k>.html, k < missing_range: 404
        return max(1, self.pages // 50)


def make_plan(pages: int, seed: int) -> Plan:
    rng = random.Random(f"crawl-bench:{seed}:{pages}")
    orphans = frozenset(i for i in range(1, pages) if rng.random() < 0.1)
    kinds = [k for k, _ in LINK_KINDS]
    cum: list[int] = []
    total = 0
    for _, w in LINK_KINDS:
        total += w
        cum.append(total)
    q_range, missing_range = max(1, pages // 20), max(1, pages // 50)

    def target() -> int:
        for _ in range(16):
            j = rng.randrange(pages)
            if j not in orphans:
                return j
        return 0

    links: list[list[tuple[str, int]]] = []
    sizes: list[int] = []
    for _page in range(pages):
        page_links: list[tuple[str, int]] = []
        for _ in range(rng.randint(20, 50)):
            kind = rng.choices(kinds, cum_weights=cum)[0]
            if kind == "repeat":
                page_links.append(page_links[rng.randrange(len(page_links))] if page_links else ("plain", target()))
            elif kind in ("query", "query_reordered"):
                page_links.append((kind, rng.randrange(q_range)))
            elif kind == "missing":
                page_links.append((kind, rng.randrange(missing_range)))
            elif kind in ("offsite", "mailto", "javascript", "anchor"):
                page_links.append((kind, rng.randrange(1000)))
            else:
                page_links.append((kind, target()))
        links.append(page_links)
        sizes.append(rng.randint(20 * 1024, 80 * 1024))
    return Plan(pages, seed, orphans, links, sizes)


def href_of(kind: str, j: int, origin: str) -> str:
    if kind in ("plain", "repeat"):
        return f"/p/{j}.html"
    if kind == "fragment":
        return f"/p/{j}.html#s{j % 7}"
    if kind == "absolute":
        return f"{origin}/p/{j}.html"
    if kind == "relative":
        return f"../p/{j}.html"
    if kind == "query":
        return f"/q/{j}.html?a=1&b=2"
    if kind == "query_reordered":
        return f"/q/{j}.html?b=2&a=1"
    if kind == "missing":
        return f"/missing/{j}.html"
    if kind == "offsite":
        return f"{OFFSITE[j % 2]}{j}"
    if kind == "mailto":
        return f"mailto:user{j}@example.invalid"
    if kind == "javascript":
        return f"javascript:void({j})"
    return "#top"


def reachable(plan: Plan, origin: str) -> list[tuple[str, int, int]]:
    """(canonical URL, status, BFS depth) of everything reachable from /p/0.html, in BFS order."""
    # node ids: ("p", j) page j; ("q", j) query page j (content of page j); ("m", k) a 404
    start = ("p", 0)
    seen = {start}
    queue: deque[tuple[tuple[str, int], int]] = deque([(start, 0)])
    out: list[tuple[str, int, int]] = []
    while queue:
        (kind, n), depth = queue.popleft()
        if kind == "p":
            out.append((f"{origin}/p/{n}.html", 200, depth))
        elif kind == "q":
            out.append((f"{origin}/q/{n}.html?a=1&b=2", 200, depth))
        else:
            out.append((f"{origin}/missing/{n}.html", 404, depth))
            continue
        for lk, j in plan.links[n]:
            if lk in ("plain", "repeat", "fragment", "absolute", "relative"):
                node = ("p", j)
            elif lk in ("query", "query_reordered"):
                node = ("q", j)
            elif lk == "missing":
                node = ("m", j)
            else:
                continue
            if node not in seen:
                seen.add(node)
                queue.append((node, depth + 1))
    return out


def _filler(seed: int) -> str:
    rng = random.Random(f"filler:{seed}")
    return " ".join(rng.choice(_WORDS) for _ in range(120_000))


def render(plan: Plan, i: int, origin: str, filler: str) -> bytes:
    links = plan.links[i]
    size = plan.sizes[i]
    anchors = [f'<a href="{html.escape(href_of(k, j, origin))}">link {n} to {k}</a>' for n, (k, j) in enumerate(links)]
    nav = "".join(f"<li>{a}</li>" for a in anchors[:6])
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Page '
        f'{i}</title><meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="description" content="Benchmark page {i}"><link rel="stylesheet" href="/site.css">'
        f'</head><body><header id="top"><nav><ul>{nav}</ul></nav></header><main><article><h1>Page {i}</h1>'
    )
    tail = "</article></main><footer><p>Generated for the crawl benchmark.</p></footer></body></html>\n"
    rest = anchors[6:]
    paragraphs = 20 + i % 17
    budget = size - len(head.encode()) - len(tail) - sum(len(a) for a in rest) - paragraphs * 20
    per = max(40, budget // paragraphs)
    body: list[str] = []
    for p in range(paragraphs):
        start = (i * 7919 + p * 104_729) % (len(filler) - per - 1)
        text = filler[start : start + per]
        cut = len(text) // 2
        mine = rest[p::paragraphs]
        if p % 5 == 4:
            body.append(f'<h2 id="s{p % 7}">Section {p}</h2>')
        body.append(f"<p>{text[:cut]} {' '.join(mine)} {text[cut:]}</p>")
    return (head + "".join(body) + tail).encode()


@dataclass
class Site:
    root: Path  # document root
    manifest: dict[str, Any]
    expected: dict[str, int]  # canonical URL -> status

    @property
    def origin(self) -> str:
        return str(self.manifest["origin"])

    @property
    def start_url(self) -> str:
        return f"{self.origin}/p/0.html"


def ensure_site(cache_dir: Path, pages: int, seed: int, port: int) -> Site:
    """Generate the site under cache_dir (unless an identical one is there); return it with its BFS."""
    origin = f"http://127.0.0.1:{port}"
    base = cache_dir / f"site-v{SITE_FORMAT}-{pages}-{seed}-{port}"
    manifest_path = base / "manifest.json"
    expected_path = base / "expected.json"
    if manifest_path.exists() and expected_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") == SITE_FORMAT:
            return Site(base / "www", manifest, json.loads(expected_path.read_text()))
    t0 = time.monotonic()
    print(f"generating the site: {pages} pages, seed {seed}, into {base} ...", flush=True)
    if base.exists():
        shutil.rmtree(base)
    www = base / "www"
    for d in ("p", "q"):
        (www / d).mkdir(parents=True)
    plan = make_plan(pages, seed)
    filler = _filler(seed)
    total = 0
    for i in range(pages):
        data = render(plan, i, origin, filler)
        total += len(data)
        (www / "p" / f"{i}.html").write_bytes(data)
    for j in range(plan.q_range):  # same content under another URL: hard links, no extra disk
        os.link(www / "p" / f"{j}.html", www / "q" / f"{j}.html")
    (www / "site.css").write_text("body{font-family:sans-serif}\n")
    reach = reachable(plan, origin)
    statuses = Counter(s for _, s, _ in reach)
    manifest = {
        "format": SITE_FORMAT,
        "pages": pages,
        "seed": seed,
        "port": port,
        "origin": origin,
        "start_url": f"{origin}/p/0.html",
        "bytes_p_pages": total,
        "mean_page_kb": round(total / pages / 1024, 1),
        "links_per_page_mean": round(sum(len(x) for x in plan.links) / pages, 1),
        "orphans": len(plan.orphans),
        "q_pages": plan.q_range,
        "missing_range": plan.missing_range,
        "reachable": len(reach),
        "reachable_200": statuses[200],
        "reachable_404": statuses[404],
        "max_depth": max(d for _, _, d in reach),
        "generated_in_s": round(time.monotonic() - t0, 1),
    }
    expected_path.write_text(json.dumps({u: s for u, s, _ in reach}))
    manifest_path.write_text(json.dumps(manifest, indent=1))
    print(
        f"generated {total / 1e6:.0f} MB in {manifest['generated_in_s']}s; reachable from page 0: "
        f"{len(reach)} ({statuses[200]} x 200, {statuses[404]} x 404)",
        flush=True,
    )
    return Site(www, manifest, {u: s for u, s, _ in reach})


def canonical(url: str) -> str:
    """The bench's own canonical form for comparing found URLs with the BFS: no fragment, sorted query."""
    p = urlsplit(url)
    q = "&".join(sorted((x for x in p.query.split("&") if x), key=lambda kv: kv.split("=", 1)[0]))
    return urlunsplit((p.scheme.lower(), p.netloc.lower(), p.path or "/", q, ""))


def warm_page_cache(root: Path) -> None:
    for f in root.rglob("*.html"):
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass


# ------------------------------------------------------------------------------------------------ processes


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        from tests.support.servers import stop_process

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
            str(Path(__file__).resolve()),
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

    from tests.support._serving import bind_socket, run_prefork

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
            "tests.support.proxy_server",
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
    return Managed("proxy", proc, port, {"impl": "tests.support.proxy_server (asyncio)"})


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
    from crawler.embedded import redis_server_binary

    port = free_port()
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(d),
            "--daemonize",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--loglevel",
            "warning",
        ],
        stdin=subprocess.DEVNULL,
        stdout=open(d / "redis.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    wait_port(port)
    return Managed("redis", proc, port, {"url": f"redis://127.0.0.1:{port}/0"})


# ------------------------------------------------------------------------------------------------ measuring


@dataclass
class Measurement:
    wall_s: float = 0.0
    exit_code: int | None = None
    timed_out: bool = False
    cpu_tree_s: float = 0.0  # getrusage(RUSAGE_CHILDREN) delta: the contender's whole tree (+ embedded redis)
    cpu_redis_s: float = 0.0  # a separate redis-server's CPU delta (psutil)
    cpu_sampled_s: float = 0.0  # psutil cross-check: sum over sampled pids of their last CPU reading
    peak_rss_main_mb: float = 0.0
    peak_rss_tree_mb: float = 0.0
    peak_rss_redis_mb: float = 0.0
    servers_cpu_s: dict[str, float] = field(default_factory=dict)  # origin server, proxy
    foreign_cpu_s: float = 0.0  # busy CPU on the machine not explained by the above: other users' load
    cpu_extra_sampled_s: float = 0.0  # psutil: last CPU reading of the extra process (the embedded redis)
    harness_cpu_s: float = 0.0  # this bench process itself (sampling), not charged to anyone
    loadavg_before: float = 0.0


class Sampler(threading.Thread):
    """Polls the contender's process tree every SAMPLE_S: RSS (main, tree) and per-pid CPU."""

    def __init__(self, root_pid: int, extra: Callable[[], psutil.Process | None]) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.extra = extra
        self.stop_event = threading.Event()
        self.cpu: dict[int, float] = {}
        self.extra_cpu: dict[int, float] = {}
        self.peak_main = 0
        self.peak_tree = 0
        self.peak_extra = 0

    def run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.Error:
            return
        while not self.stop_event.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            tree = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    with p.oneshot():
                        rss = p.memory_info().rss
                        t = p.cpu_times()
                    tree += rss
                    if p.pid == self.root_pid:
                        self.peak_main = max(self.peak_main, rss)
                    self.cpu[p.pid] = t.user + t.system
            self.peak_tree = max(self.peak_tree, tree)
            ex = self.extra()
            if ex is not None:
                with contextlib.suppress(psutil.Error):
                    self.peak_extra = max(self.peak_extra, ex.memory_info().rss)
                    # a zombie reads as 0: keep the last real reading
                    self.extra_cpu[ex.pid] = max(self.extra_cpu.get(ex.pid, 0.0), proc_cpu_s(ex))
            self.stop_event.wait(SAMPLE_S)


def system_busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0))


def reap_strays(keep: set[int], timeout_s: float = 20.0) -> list[str]:
    """Wait for (and reap) every child of ours that is not a long-lived helper; kill those that outstay."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout_s
    killed: list[str] = []
    while True:
        strays = [c for c in me.children() if c.pid not in keep]
        for c in strays:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(c.pid, os.WNOHANG)
        alive = [c for c in strays if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        zombies = [c for c in strays if c.is_running() and c.status() == psutil.STATUS_ZOMBIE]
        if not alive and not zombies:
            return killed
        if time.monotonic() > deadline:
            for c in alive:
                with contextlib.suppress(psutil.Error):
                    killed.append(" ".join(c.cmdline())[:120])
                    c.kill()
            deadline = time.monotonic() + 5
        time.sleep(0.05)


def measure(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    keep: set[int],
    servers: list[Managed],
    redis: Managed | None = None,
    extra: Callable[[], psutil.Process | None] = lambda: None,
    cwd: Path = ROOT,
) -> Measurement:
    """Run one contender to completion and account for everything it costs."""
    m = Measurement(loadavg_before=os.getloadavg()[0])
    reap_strays(keep, 5)
    cpu0 = children_cpu_s()
    redis0 = redis.cpu_s() if redis else 0.0
    srv0 = {s.name: s.cpu_s() for s in servers}
    busy0 = system_busy_s()
    self0 = proc_cpu_s(psutil.Process())
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = Sampler(proc.pid, extra)
        sampler.start()
        try:
            m.exit_code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            m.timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group of the process we started
            m.exit_code = proc.wait()
        m.wall_s = time.monotonic() - t0
        sampler.stop_event.set()
        sampler.join()
    # the embedded redis shuts down when the last crawl process leaves: wait for it, then reap it
    ex = extra()
    if ex is not None:
        with contextlib.suppress(psutil.Error):
            ex.wait(timeout=15)
    reap_strays(keep)
    m.cpu_tree_s = children_cpu_s() - cpu0
    m.cpu_redis_s = (redis.cpu_s() - redis0) if redis else 0.0
    m.cpu_extra_sampled_s = sum(sampler.extra_cpu.values())
    m.cpu_sampled_s = sum(sampler.cpu.values()) + m.cpu_extra_sampled_s + m.cpu_redis_s
    m.servers_cpu_s = {s.name: round(s.cpu_s() - srv0[s.name], 2) for s in servers}
    busy = system_busy_s() - busy0
    m.harness_cpu_s = proc_cpu_s(psutil.Process()) - self0
    m.foreign_cpu_s = max(0.0, busy - m.cpu_tree_s - m.cpu_redis_s - sum(m.servers_cpu_s.values()) - m.harness_cpu_s)
    m.peak_rss_main_mb = sampler.peak_main / 1e6
    m.peak_rss_tree_mb = sampler.peak_tree / 1e6
    m.peak_rss_redis_mb = (max(sampler.peak_extra, _rss(redis)) if redis else sampler.peak_extra) / 1e6
    return m


def _rss(m: Managed | None) -> int:
    if m is None:
        return 0
    with contextlib.suppress(psutil.Error):
        return int(m.ps.memory_info().rss)
    return 0


# ------------------------------------------------------------------------------------------------ contenders


def clean_env(src: Path = ROOT) -> dict[str, str]:
    """No proxy or CRAWL_* variables leak in; `src` (the crawl source tree to measure) comes first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CRAWL_")}
    env.pop("REDIS_URL", None)
    env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def found_urls_jsonl(paths: Iterable[Path]) -> tuple[list[str], Counter[int]]:
    urls: list[str] = []
    statuses: Counter[int] = Counter()
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    urls.append(rec["url"])
                    statuses[int(rec.get("status") or 0)] += 1
    return urls, statuses


def crawl_log_metrics(log: Path) -> dict[str, Any]:
    """From `--log-format json` output: the summary line, and parse_wait_share / lag over throughput lines."""
    out: dict[str, Any] = {}
    shares: list[tuple[float, int]] = []
    lags: list[float] = []
    rss: list[float] = []
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("event") == "summary":
            out["summary"] = obj
        elif obj.get("event") == "throughput":
            if obj.get("parse_wait_share") is not None:
                shares.append((float(obj["parse_wait_share"]), int(obj.get("pages") or 0)))
            if obj.get("loop_lag_p99_ms") is not None:
                lags.append(float(obj["loop_lag_p99_ms"]))
            if obj.get("rss_mb") is not None:
                rss.append(float(obj["rss_mb"]))
    s = out.get("summary", {})
    out["loop_lag_p99_ms"] = s.get("loop_lag_p99_ms")
    out["peak_rss_mb_self"] = s.get("peak_rss_mb")
    out["pages_reported"] = s.get("pages")
    out["worker_elapsed_s"] = s.get("elapsed_s")
    out["errors"] = s.get("errors")
    weight = sum(n for _, n in shares)
    out["parse_wait_share"] = round(sum(x * n for x, n in shares) / weight, 3) if weight else None
    out["loop_lag_p99_ms_worst_window"] = max(lags) if lags else None
    return out


@dataclass
class Env:
    args: argparse.Namespace
    site: Site
    proxy_url: str
    workdir: Path
    servers: list[Managed]
    keep: set[int]


def contender_crawl_run(e: Env, run_dir: Path) -> tuple[Measurement, dict[str, Any]]:
    home = run_dir / "home"
    out = run_dir / "out"
    seeds = run_dir / "seeds.txt"
    seeds.write_text(e.site.start_url + "\n")
    cmd = [
        sys.executable,
        "-m",
        "crawler",
        "run",
        str(seeds),
        "--home",
        str(home),
        "--output",
        str(out),
        *crawl_flags(e),
    ]
    pidfile = None

    def redis_proc() -> psutil.Process | None:
        nonlocal pidfile
        path = home / "redis.pid"
        if pidfile is None:
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                pidfile = psutil.Process(int(path.read_text().strip()))
        return pidfile

    m = measure(
        cmd,
        clean_env(e.args.crawl_src),
        run_dir / "log.txt",
        e.args.contender_timeout_s,
        e.keep,
        e.servers,
        extra=redis_proc,
        cwd=e.args.crawl_src,
    )
    m.cpu_redis_s = 0.0  # the embedded redis is our (subreaped) child: already inside cpu_tree_s
    urls, statuses = found_urls_jsonl(sorted(out.glob("*.jsonl")))
    return m, {
        "urls": urls,
        "statuses": statuses,
        "crawl": crawl_log_metrics(run_dir / "log.txt"),
        "embedded_redis_cpu_s_sampled": round(m.cpu_extra_sampled_s, 2),
    }


def crawl_flags(e: Env) -> list[str]:
    return [
        "--concurrency",
        str(e.args.concurrency),
        "--per-host-concurrency",
        "0",
        "--no-robots",
        "--proxy",
        e.proxy_url,
        "--log-format",
        "json",
        "--log-interval",
        "1",
    ]


def contender_crawl_worker(
    e: Env, run_dir: Path, cmd_prefix: list[str] | None = None, timeout_s: float | None = None
) -> tuple[Measurement, dict[str, Any]]:
    redis = start_redis(run_dir, "redis")
    e.keep.add(redis.proc.pid)
    try:
        out = run_dir / "out"
        seeds = run_dir / "seeds.txt"
        seeds.write_text(e.site.start_url + "\n")
        src = e.args.crawl_src
        env = clean_env(src)
        url = redis.info["url"]
        subprocess.run(
            [sys.executable, "-m", "crawler", "enqueue", str(seeds), "--redis", url],
            cwd=src,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        cmd = [
            *(cmd_prefix or []),
            sys.executable,
            "-m",
            "crawler",
            "worker",
            "--redis",
            url,
            "--until-idle",
            "--output",
            str(out),
            *crawl_flags(e),
        ]
        m = measure(
            cmd, env, run_dir / "log.txt", timeout_s or e.args.contender_timeout_s, e.keep, e.servers, redis, cwd=src
        )
        stats = subprocess.run(
            [sys.executable, "-m", "crawler", "stats", "--json", "--redis", url],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        redis.stop()
        e.keep.discard(redis.proc.pid)
    urls, statuses = found_urls_jsonl(sorted(out.glob("*.jsonl")))
    extra: dict[str, Any] = {"urls": urls, "statuses": statuses, "crawl": crawl_log_metrics(run_dir / "log.txt")}
    with contextlib.suppress(ValueError):
        extra["frontier_stats"] = json.loads(stats.stdout)
    return m, extra


def contender_bare(e: Env, run_dir: Path, parse: str) -> tuple[Measurement, dict[str, Any]]:
    out = run_dir / "out.jsonl"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bare_loop.py"),
        e.site.start_url,
        "--proxy",
        e.proxy_url,
        "--concurrency",
        str(e.args.concurrency),
        "--parse",
        parse,
        "--output",
        str(out),
    ]
    m = measure(cmd, clean_env(), run_dir / "log.txt", e.args.contender_timeout_s, e.keep, e.servers)
    urls, statuses = found_urls_jsonl([out]) if out.exists() else ([], Counter())
    summary: dict[str, Any] = {}
    for line in (run_dir / "log.txt").read_text(errors="replace").splitlines():
        if line.startswith('{"event": "summary"') or line.startswith('{"event":"summary"'):
            summary = json.loads(line)
    return m, {"urls": urls, "statuses": statuses, "bare": summary}


def contender_scrapy(e: Env, run_dir: Path, use_redis: bool = True) -> tuple[Measurement, dict[str, Any]]:
    redis = start_redis(run_dir, "redis") if use_redis else None
    if redis:
        e.keep.add(redis.proc.pid)
    try:
        out = run_dir / "out.jsonl"
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / "scrapy_bench" / "run.py"),
            e.site.start_url,
            "--proxy",
            e.proxy_url,
            "--concurrency",
            str(e.args.concurrency),
            "--output",
            str(out),
            *(["--redis", redis.info["url"]] if redis else ["--memory-scheduler"]),
        ]
        m = measure(cmd, clean_env(), run_dir / "log.txt", e.args.contender_timeout_s, e.keep, e.servers, redis)
    finally:
        if redis:
            redis.stop()
            e.keep.discard(redis.proc.pid)
    urls, statuses = found_urls_jsonl([out]) if out.exists() else ([], Counter())
    summary: dict[str, Any] = {}
    for line in (run_dir / "log.txt").read_text(errors="replace").splitlines():
        if line.startswith('{"event": "summary"'):
            summary = json.loads(line)
    return m, {"urls": urls, "statuses": statuses, "scrapy": summary}


def run_contender(name: str, e: Env, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    if name == "crawl-run":
        m, extra = contender_crawl_run(e, run_dir)
    elif name == "crawl-worker":
        m, extra = contender_crawl_worker(e, run_dir)
    elif name == "bare-pool":
        m, extra = contender_bare(e, run_dir, "pool")
    elif name == "bare-inline":
        m, extra = contender_bare(e, run_dir, "inline")
    elif name == "scrapy":
        m, extra = contender_scrapy(e, run_dir)
    elif name == "scrapy-mem":
        m, extra = contender_scrapy(e, run_dir, use_redis=False)
    else:
        raise ValueError(name)
    urls = extra.pop("urls")
    statuses = extra.pop("statuses")
    canon = [canonical(u) for u in urls]
    distinct = set(canon)
    expected = set(e.site.expected)
    pages = len(distinct)
    cpu = m.cpu_tree_s + m.cpu_redis_s
    res: dict[str, Any] = {
        "contender": name,
        "pages_found": pages,
        "pages_expected": len(expected),
        "match": distinct == expected,
        "missing": len(expected - distinct),
        "extra": len(distinct - expected),
        "duplicate_records": len(canon) - pages,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": round(m.wall_s, 2),
        "pages_per_s": round(pages / m.wall_s, 1) if m.wall_s else 0.0,
        "cpu_s": round(cpu, 2),
        "cpu_tree_s": round(m.cpu_tree_s, 2),
        "cpu_redis_s": round(m.cpu_redis_s, 2),
        "cpu_sampled_s": round(m.cpu_sampled_s, 2),
        "cpu_ms_per_page": round(cpu * 1000 / pages, 3) if pages else None,
        "peak_rss_main_mb": round(m.peak_rss_main_mb, 1),
        "peak_rss_tree_mb": round(m.peak_rss_tree_mb, 1),
        "peak_rss_redis_mb": round(m.peak_rss_redis_mb, 1),
        "servers_cpu_s": m.servers_cpu_s,
        "foreign_cpu_s": round(m.foreign_cpu_s, 2),
        "harness_cpu_s": round(m.harness_cpu_s, 2),
        "foreign_cores": round(m.foreign_cpu_s / m.wall_s, 2) if m.wall_s else 0.0,
        "loadavg_before": round(m.loadavg_before, 2),
        "exit_code": m.exit_code,
        "timed_out": m.timed_out,
        "log": str(run_dir / "log.txt"),
        **extra,
    }
    if not res["match"]:
        sample = sorted(expected - distinct)[:3] + sorted(distinct - expected)[:3]
        res["mismatch_sample"] = sample
    return res


# ------------------------------------------------------------------------------------------------ profile

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("garbage collector", ("gc_collect",)),
    ("URL normalisation", ("crawler/urls.py", "urllib/parse.py", "hashlib")),
    ("HTML parsing (selectolax/lexbor)", ("selectolax", "lexbor", "crawler/parse.py", "codecs")),
    (
        "parse-pool IPC (pickle, pipes)",
        (
            "concurrent/futures/process.py",
            "multiprocessing/",
            "pickle",
            "workers/parse_pool.py",
            "_dataclass_getstate",
            "_dataclass_setstate",
        ),
    ),
    ("redis client", ("redis/", "crawler/frontier.py")),
    ("JSON + records + sink", ("json/", "crawler/records.py", "crawler/sinks.py", "dataclasses.py")),
    (
        "aiohttp / yarl / aiohappyeyeballs (HTTP, connects)",
        ("aiohttp", "yarl", "multidict", "aiohappyeyeballs", "crawler/fetch.py", "socket.py"),
    ),
    ("tenacity (retry wrapper)", ("tenacity/",)),
    ("metrics / psutil", ("crawler/metrics.py", "psutil")),
    ("crawl pipeline logic", ("workers/", "crawler/")),
    (
        "event loop (asyncio/uvloop)",
        ("asyncio/", "uvloop", "selectors.py", "threading.py", "concurrent/futures/thread"),
    ),
)
# Innermost native frames that mean "this thread is blocked, not on CPU" (py-spy's own idle detection misses
# them inside containers): pipe reads, poll/epoll, futex waits (shown as bare libc addresses), condition waits.
WAIT_LEAVES = frozenset(
    {
        "read",
        "__libc_read",
        "poll",
        "__poll",
        "ppoll",
        "epoll_wait",
        "epoll_pwait",
        "select",
        "pselect",
        "pselect6",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "__pthread_cond_wait",
        "__pthread_cond_timedwait",
        "sem_wait",
        "sem_timedwait",
        "sem_clockwait",
        "nanosleep",
        "clock_nanosleep",
        "__futex_abstimed_wait_common",
        "syscall",
        "accept",
        "accept4",
        "take_gil",
        "PyThread_acquire_lock_timed",
        "waitpid",
        "wait4",
    }
)


def _is_native(frame: str) -> bool:
    return ".py:" not in frame and "<frozen" not in frame


def _is_wait(leaf: str) -> bool:
    name, _, where = leaf.partition(" (")
    return name in WAIT_LEAVES or (name.startswith("0x") and "libc" in where)


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other (interpreter start-up, imports, ...)"


def _python_leaf(frames: list[str]) -> str:
    """The innermost Python function: native work is charged to its caller, except the garbage collector."""
    for frame in reversed(frames):
        if "gc_collect" in frame:
            return "[garbage collector] (gc_collect_main, libpython)"
        if not _is_native(frame):
            return frame
    return frames[-1]


def summarise_profile(files: list[tuple[str, Path]]) -> dict[str, Any]:
    """py-spy `--native --format raw` files (collapsed stacks), each labelled with its process role.

    Samples whose innermost frame is a blocking wait are counted as waiting and left out of the rest; the on-CPU
    samples are ranked by self time in the Python view (native frames charged to the calling Python function) and
    by area (the innermost frame that names one), overall and per process.
    """
    py_self: Counter[str] = Counter()
    native_self: Counter[str] = Counter()
    by_proc_fn: dict[str, Counter[str]] = {}
    by_cat: Counter[str] = Counter()
    by_proc_cat: dict[str, Counter[str]] = {}
    by_proc: Counter[str] = Counter()
    waits: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()  # crawl's own functions: samples with the function anywhere on the stack
    total = 0
    for label, raw in files:
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            if _is_wait(frames[-1]):
                waits[label] += n
                continue
            total += n
            for fn in {f.rsplit(":", 1)[0] + ")" for f in frames if "crawler/" in f or "workers/" in f}:
                inclusive[fn] += n
            leaf = _python_leaf(frames)
            py_self[leaf] += n
            if _is_native(frames[-1]):
                native_self[frames[-1]] += n
            by_proc_fn.setdefault(label, Counter())[leaf] += n
            cat = _category(frames)
            by_cat[cat] += n
            by_proc_cat.setdefault(label, Counter())[cat] += n
            by_proc[label] += n

    def pct(c: int, t: int) -> float:
        return round(100 * c / t, 1) if t else 0.0

    return {
        "samples": total,
        "wait_samples": dict(waits),
        "by_process": {p: {"samples": c, "share_pct": pct(c, total)} for p, c in by_proc.most_common()},
        "top_self": [{"function": f, "samples": c, "share_pct": pct(c, total)} for f, c in py_self.most_common(15)],
        "top_native": [
            {"function": f, "samples": c, "share_pct": pct(c, total)} for f, c in native_self.most_common(10)
        ],
        "top_self_by_process": {
            p: [{"function": f, "samples": c, "share_pct": pct(c, by_proc[p])} for f, c in fns.most_common(10)]
            for p, fns in by_proc_fn.items()
        },
        "by_area": [{"area": a, "samples": c, "share_pct": pct(c, total)} for a, c in by_cat.most_common()],
        "inclusive_crawl": [
            {"function": f, "samples": c, "share_pct": pct(c, total)}
            for f, c in inclusive.most_common(40)
            if "<module>" not in f and "cli.py" not in f
        ][:16],
        "by_area_by_process": {
            p: [{"area": a, "share_pct": pct(c, by_proc[p])} for a, c in cats.most_common()]
            for p, cats in by_proc_cat.items()
        },
    }


class PoolSpy(threading.Thread):
    """Attaches `py-spy record --pid` to each parse-pool process as it appears.

    `py-spy --subprocesses` does not follow the forkserver's children, so pool workers are found here: processes
    descending from this bench process (never anyone else's) whose parent is a multiprocessing forkserver.
    """

    def __init__(self, pyspy: str, out_prefix: Path, rate: int) -> None:
        super().__init__(daemon=True)
        self.pyspy, self.out_prefix, self.rate = pyspy, out_prefix, rate
        self.stop_event = threading.Event()
        self.spies: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop_event.is_set():
            with contextlib.suppress(psutil.Error):
                for p in me.children(recursive=True):
                    if p.pid in self.spies:
                        continue
                    with contextlib.suppress(psutil.Error):
                        parent = p.parent()
                        if parent is None or "multiprocessing.forkserver" not in " ".join(parent.cmdline()):
                            continue
                        out = Path(f"{self.out_prefix}-pool-{p.pid}.txt")
                        spy = subprocess.Popen(
                            [
                                self.pyspy,
                                "record",
                                "--format",
                                "raw",
                                "--rate",
                                str(self.rate),
                                *PYSPY_MODE,
                                "-o",
                                str(out),
                                "--pid",
                                str(p.pid),
                            ],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        self.spies[p.pid] = (spy, out)
            self.stop_event.wait(0.05)

    def finish(self) -> list[Path]:
        self.stop_event.set()
        self.join()
        outs: list[Path] = []
        for spy, out in self.spies.values():
            try:
                spy.wait(timeout=30)  # ends by itself when its target exits
            except subprocess.TimeoutExpired:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=10)
            if out.exists():
                outs.append(out)
        return outs


PROFILE_RATE = 100
PYSPY_MODE: list[str] = os.environ.get("BENCH_PYSPY_MODE", "--native").split()


def run_profile(e: Env, out_dir: Path, stamp: str) -> dict[str, Any] | None:
    pyspy = shutil.which("py-spy")
    if not pyspy:
        print("py-spy not installed (pip install py-spy): no profile", flush=True)
        return None
    raw = out_dir / f"profile-{stamp}-worker.txt"
    prefix = [pyspy, "record", "--format", "raw", "--rate", str(PROFILE_RATE), *PYSPY_MODE, "-o", str(raw), "--"]
    run_dir = e.workdir / "profile"
    run_dir.mkdir(parents=True, exist_ok=True)
    print("profiling one crawl-worker pass under py-spy (not timed) ...", flush=True)
    pool_spy = PoolSpy(pyspy, out_dir / f"profile-{stamp}", PROFILE_RATE)
    pool_spy.start()
    try:
        m, extra = contender_crawl_worker(e, run_dir, prefix, timeout_s=e.args.contender_timeout_s * 2)
    finally:
        pool_files = pool_spy.finish()
    if not raw.exists():
        print(f"py-spy wrote no profile; see {run_dir / 'log.txt'}", flush=True)
        return None
    files = [("worker process (event loop)", raw)] + [("parse pool process", f) for f in pool_files]
    summary = summarise_profile(files)
    summary["raw"] = [str(f) for _, f in files]
    summary["pages"] = len(set(extra["urls"]))
    summary["wall_s_under_profiler"] = round(m.wall_s, 2)
    summary["cpu_s_under_profiler"] = round(m.cpu_tree_s + m.cpu_redis_s, 2)
    summary["crawl"] = extra.get("crawl")
    return summary


# ------------------------------------------------------------------------------------------------ report


def code_identity(src: Path = ROOT) -> dict[str, Any]:
    """Which code was measured: HEAD, uncommitted files, and a hash of crawler/ + workers/ (read-only git)."""
    import hashlib

    out: dict[str, Any] = {"src": str(src)}
    marker = src / ".bench-commit"  # an extracted tree (git archive) names its commit here
    if src != ROOT:
        out["git_head"] = marker.read_text().strip() if marker.exists() else None
    else:
        out.update(_git_state())
    h = hashlib.sha256()
    for f in sorted([*src.glob("crawler/**/*.py"), *src.glob("crawler/lua/*.lua"), *src.glob("workers/*.py")]):
        h.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes())
    out["code_sha256"] = h.hexdigest()[:16]
    return out


def _git_state() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["git_head"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "crawler", "workers"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        out["dirty_code_files"] = [d.strip() for d in dirty if d.strip()]
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def aggregate(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["contender"], []).append(r)
    agg: dict[str, dict[str, Any]] = {}
    for name, rs in by.items():
        a: dict[str, Any] = {"runs": len(rs), "all_match": all(r["match"] for r in rs)}
        for key in (
            "pages_found",
            "pages_expected",
            "wall_s",
            "pages_per_s",
            "cpu_s",
            "cpu_ms_per_page",
            "peak_rss_main_mb",
            "peak_rss_tree_mb",
            "peak_rss_redis_mb",
            "foreign_cores",
            "cpu_redis_s",
        ):
            vals = [r[key] for r in rs if r.get(key) is not None]
            a[key] = round(median(vals), 3) if vals else None
        a["pages_per_s_all"] = [r["pages_per_s"] for r in rs]
        for key in ("loop_lag_p99_ms", "parse_wait_share", "peak_rss_mb_self", "loop_lag_p99_ms_worst_window"):
            vals = [r["crawl"][key] for r in rs if r.get("crawl") and r["crawl"].get(key) is not None]
            vals += [r["bare"][key] for r in rs if r.get("bare") and r["bare"].get(key) is not None]
            if vals:
                a[key] = round(median(vals), 3)
        for sname in ("nginx", "static", "proxy"):
            vals = [r["servers_cpu_s"].get(sname) for r in rs if r["servers_cpu_s"].get(sname) is not None]
            if vals:
                a[f"{sname}_cpu_s"] = round(median(vals), 2)
        agg[name] = a
    return agg


def ratios(agg: dict[str, dict[str, Any]]) -> None:
    bare = agg.get("bare-pool")
    scrapy = agg.get("scrapy")
    for a in agg.values():
        if bare and bare["pages_per_s"]:
            a["x_bare_pages_per_s"] = round(a["pages_per_s"] / bare["pages_per_s"], 2)
        if bare and bare.get("cpu_ms_per_page") and a.get("cpu_ms_per_page"):
            a["x_bare_cpu_ms_per_page"] = round(a["cpu_ms_per_page"] / bare["cpu_ms_per_page"], 2)
        if scrapy and scrapy["pages_per_s"]:
            a["x_scrapy_pages_per_s"] = round(a["pages_per_s"] / scrapy["pages_per_s"], 2)


def targets(agg: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in ("crawl-run", "crawl-worker"):
        a = agg.get(name)
        if not a:
            continue

        def add(what: str, value: Any, limit: str, ok: bool | None, name: str = name) -> None:
            out.append(
                {
                    "contender": name,
                    "target": what,
                    "value": value,
                    "limit": limit,
                    "met": ok,
                    "verdict": "n/a" if ok is None else ("met" if ok else "NOT met"),
                }
            )

        xs = a.get("x_scrapy_pages_per_s")
        add("pages/s vs Scrapy", xs, ">= 8x", None if xs is None else xs >= 8)
        xb = a.get("x_bare_pages_per_s")
        add("pages/s vs bare loop (parse pool)", xb, ">= 0.8x", None if xb is None else xb >= 0.8)
        xc = a.get("x_bare_cpu_ms_per_page")
        add("CPU-ms/page (tree + Redis) vs bare loop", xc, "<= 1.3x", None if xc is None else xc <= 1.3)
        rss = a.get("peak_rss_main_mb")
        add("peak RSS of the worker process (MB)", rss, "<= 250", None if rss is None else rss <= 250)
        lag = a.get("loop_lag_p99_ms")
        add("event-loop lag p99 (ms)", lag, "<= 50", None if lag is None else lag <= 50)
        add("pages found == reachable (every run)", a["all_match"], "true", a["all_match"])
    return out


def markdown(agg: dict[str, dict[str, Any]], tgt: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def f(x: Any, nd: int = 1) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.{nd}f}"
        return str(x)

    lines = [
        f"Site: {meta['site']['pages']} pages generated ({meta['site']['mean_page_kb']} KB mean, "
        f"{meta['site']['links_per_page_mean']} links/page), **{meta['site']['reachable']} URLs reachable** from "
        f"page 0 ({meta['site']['reachable_200']} x 200, {meta['site']['reachable_404']} x 404); origin: "
        f"{meta['server']['impl']}; proxy: {meta['proxy']['impl']} (BasicAuth); concurrency {meta['concurrency']}; "
        f"medians of {meta['runs_done']} run(s) (Scrapy: {min(meta['runs_done'], meta['scrapy_runs'])}); "
        f"{meta['cpus']} CPUs; code {meta['code'].get('git_head')} (+{len(meta['code'].get('dirty_code_files', []))} "
        f"uncommitted files, sha {meta['code'].get('code_sha256')}).",
        "",
        "| contender | pages found / reachable | wall s | pages/s | x bare | x Scrapy | CPU s (tree+Redis) "
        "| CPU-ms/page | CPU x bare | peak RSS main MB | peak RSS tree MB | Redis RSS MB | foreign load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONTENDERS + OPTIONAL_CONTENDERS:
        a = agg.get(name)
        if not a:
            continue
        ok = "" if a["all_match"] else " **MISMATCH**"
        lines.append(
            f"| {name} | {f(a['pages_found'], 0)} / {f(a['pages_expected'], 0)}{ok} | {f(a['wall_s'], 2)} "
            f"| {f(a['pages_per_s'], 0)} | {f(a.get('x_bare_pages_per_s'), 2)} | {f(a.get('x_scrapy_pages_per_s'), 2)} "
            f"| {f(a['cpu_s'], 2)} | {f(a['cpu_ms_per_page'], 3)} | {f(a.get('x_bare_cpu_ms_per_page'), 2)} "
            f"| {f(a['peak_rss_main_mb'])} | {f(a['peak_rss_tree_mb'])} | {f(a['peak_rss_redis_mb'])} "
            f"| {f(a['foreign_cores'], 2)} |"
        )
    crawl = [n for n in ("crawl-run", "crawl-worker", "bare-pool", "bare-inline") if n in agg]
    if crawl:
        lines += [
            "",
            "| contender | event-loop lag p99 ms (whole run) | worst 1 s window lag p99 ms "
            "| parse_wait_share | self-reported peak RSS MB | Redis CPU s |",
            "|---|---|---|---|---|---|",
        ]
        for n in crawl:
            a = agg[n]
            redis_cpu = {"crawl-worker": f(a.get("cpu_redis_s"), 2), "crawl-run": "in tree"}.get(n, "-")
            lines.append(
                f"| {n} | {f(a.get('loop_lag_p99_ms'))} | {f(a.get('loop_lag_p99_ms_worst_window'))} "
                f"| {f(a.get('parse_wait_share'), 3)} | {f(a.get('peak_rss_mb_self'))} | {redis_cpu} |"
            )
    if tgt:
        lines += ["", "| target | contender | value | limit | verdict |", "|---|---|---|---|---|"]
        for t in tgt:
            lines.append(f"| {t['target']} | {t['contender']} | {f(t['value'], 2)} | {t['limit']} | {t['verdict']} |")
    return "\n".join(lines)


def profile_markdown(p: dict[str, Any]) -> str:
    waits = ", ".join(f"{k}: {v}" for k, v in p.get("wait_samples", {}).items())
    lines = [
        f"py-spy {' '.join(PYSPY_MODE)} at {PROFILE_RATE} Hz over one crawl-worker pass ({p['pages']} pages, "
        f"{p['wall_s_under_profiler']} s under the profiler, {p['cpu_s_under_profiler']} CPU s): {p['samples']} "
        f"on-CPU samples (blocked-thread samples left out: {waits}); raw collapsed stacks: "
        + ", ".join(f"`{Path(r).name}`" for r in p["raw"])
        + ".",
        "",
        "| process | share of on-CPU samples |",
        "|---|---|",
    ]
    for proc, v in p["by_process"].items():
        lines.append(f"| {proc} | {v['share_pct']}% |")
    lines += ["", "| # | function (self time; native code charged to its Python caller) | share |", "|---|---|---|"]
    for i, row in enumerate(p["top_self"][:10], 1):
        lines.append(f"| {i} | `{row['function']}` | {row['share_pct']}% |")
    lines += ["", "| area (innermost frame that names one) | share |", "|---|---|"]
    for row in p["by_area"]:
        lines.append(f"| {row['area']} | {row['share_pct']}% |")
    lines += ["", "| crawl function (inclusive: on the stack) | share |", "|---|---|"]
    for row in p.get("inclusive_crawl", [])[:14]:
        lines.append(f"| `{row['function']}` | {row['share_pct']}% |")
    lines += ["", "| native leaf | share |", "|---|---|"]
    for row in p.get("top_native", [])[:8]:
        lines.append(f"| `{row['function']}` | {row['share_pct']}% |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["serve-static"]:
        sp = argparse.ArgumentParser()
        sp.add_argument("--root", required=True)
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--processes", type=int, default=2)
        a = sp.parse_args(argv[1:])
        return serve_static(a.root, a.port, a.processes)

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pages", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help="comma-separated, from " + ",".join(CONTENDERS + OPTIONAL_CONTENDERS),
    )
    ap.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--proxy", dest="proxy_impl", choices=("auto", "tinyproxy", "python"), default="auto")
    ap.add_argument("--site-port", type=int, default=18431, help="baked into the site's absolute links")
    ap.add_argument(
        "--cache-dir", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crawl-bench"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--budget-s", type=float, default=1500, help="start no new run after this many seconds")
    ap.add_argument(
        "--scrapy-runs",
        type=int,
        default=1,
        help="runs of the Scrapy contenders (slow: ~8 min per 20,000 pages on 2 busy cores)",
    )
    ap.add_argument("--contender-timeout-s", type=float, default=0, help="0: 60 s + 60 ms per page")
    ap.add_argument(
        "--crawl-src",
        type=Path,
        default=ROOT,
        help="source tree whose crawler/ + workers/ the crawl contenders run (A/B against another commit: "
        "git archive COMMIT | tar -x -C DIR)",
    )
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args(argv)
    args.crawl_src = args.crawl_src.resolve()
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    for n in names:
        if n not in CONTENDERS + OPTIONAL_CONTENDERS:
            ap.error(f"unknown contender {n!r}")
    if not args.contender_timeout_s:
        args.contender_timeout_s = 60 + 0.06 * args.pages
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt  # run the finally blocks: stop the servers we started

    signal.signal(signal.SIGTERM, on_term)
    args.out.mkdir(parents=True, exist_ok=True)
    subreaper = become_subreaper()
    if not subreaper:
        print("warning: could not become a child subreaper; the embedded Redis's CPU is not counted", flush=True)

    port = args.site_port
    if not port_free(port):
        port = free_port()
        print(f"port {args.site_port} is busy; serving on {port} (the site is generated for that port)", flush=True)
    code = code_identity(args.crawl_src)
    print(f"measuring code {code}", flush=True)
    site = ensure_site(args.cache_dir, args.pages, args.seed, port)
    warm_page_cache(site.root)
    workdir = Path(tempfile.mkdtemp(prefix="crawl-bench-"))
    servers: list[Managed] = []
    results: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    runs_done = 0
    try:
        server: Managed | None = None
        if args.server in ("auto", "nginx") and shutil.which("nginx"):
            server = start_nginx(site, port, args.nginx_workers, workdir)
        elif args.server == "nginx":
            raise SystemExit("nginx not installed (apt-get install nginx-light)")
        if server is None:
            server = start_python_static(site, port, 2, workdir)
        servers.append(server)
        proxy_port = free_port()
        proxy: Managed | None = None
        if args.proxy_impl in ("auto", "tinyproxy") and shutil.which("tinyproxy"):
            proxy = start_tinyproxy(proxy_port, workdir)
        elif args.proxy_impl == "tinyproxy":
            raise SystemExit("tinyproxy not installed (apt-get install tinyproxy)")
        if proxy is None:
            proxy = start_python_proxy(proxy_port, workdir)
        servers.append(proxy)
        check_proxy(proxy_port, site.start_url)
        proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy_port}"
        keep = set().union(*(s.pids() for s in servers))
        env = Env(args, site, proxy_url, workdir, servers, keep)
        print(f"origin: {server.info} on :{port}; proxy: {proxy.info} on :{proxy_port}; workdir {workdir}", flush=True)

        for run in range(1, args.runs + 1):
            if run > 1 and time.monotonic() - started > args.budget_s:
                print(f"time budget ({args.budget_s:.0f}s) spent: stopping after {runs_done} run(s)", flush=True)
                break
            for name in names:
                if name.startswith("scrapy") and run > args.scrapy_runs:
                    continue
                r = run_contender(name, env, workdir / f"run{run}" / name)
                r["run"] = run
                results.append(r)
                print(
                    f"run {run} {name:13s} pages {r['pages_found']}/{r['pages_expected']}"
                    f"{'' if r['match'] else ' MISMATCH'} wall {r['wall_s']:.2f}s {r['pages_per_s']:.0f}/s "
                    f"cpu {r['cpu_s']:.2f}s ({r['cpu_ms_per_page']} ms/page) rss {r['peak_rss_main_mb']:.0f}/"
                    f"{r['peak_rss_tree_mb']:.0f} MB foreign {r['foreign_cores']} cores exit {r['exit_code']}",
                    flush=True,
                )
            runs_done = run
        if args.profile and "crawl-worker" in names:
            profile = run_profile(env, args.out, stamp)
    finally:
        for s in reversed(servers):
            s.stop()
        reap_strays(set(), 10)
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    agg = aggregate(results)
    ratios(agg)
    tgt = targets(agg)
    meta = {
        "command": "python scripts/bench.py " + " ".join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "site": site.manifest,
        "server": servers[0].info if servers else {},
        "proxy": servers[1].info if len(servers) > 1 else {},
        "concurrency": args.concurrency,
        "runs_requested": args.runs,
        "runs_done": runs_done,
        "scrapy_runs": args.scrapy_runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "subreaper": subreaper,
        "code": code,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    table = markdown(agg, tgt, meta)
    doc = {"meta": meta, "medians": agg, "targets": tgt, "runs": results, "profile": profile, "markdown": table}
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(doc, indent=1, default=str))
    (args.out / "bench-latest.json").write_text(json.dumps(doc, indent=1, default=str))
    md = table + ("\n\n" + profile_markdown(profile) if profile else "")
    (args.out / f"bench-{stamp}.md").write_text(md + "\n")
    print("\n" + md + f"\n\nJSON: {path}", flush=True)
    return 0 if all(a["all_match"] for a in agg.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
