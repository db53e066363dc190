"""The benchmark's site: a deterministic static site generated once (cached), and its exact reachable set.

Why static files: the origin must cost next to nothing (nginx serving files), so the benchmark measures the
crawlers, not the server. The BFS over the same plan the pages are rendered from gives the URL set every
contender must find, checked URL by URL.
"""

from __future__ import annotations

import html
import json
import os
import random
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SITE_FORMAT = 3  # bump when the generator's output changes: invalidates cached sites


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


# How each kind of link is written, from its target page number and the site's origin ("anchor": "#top").
HREFS: dict[str, Callable[[int, str], str]] = {
    "plain": lambda j, _origin: f"/p/{j}.html",
    "repeat": lambda j, _origin: f"/p/{j}.html",
    "fragment": lambda j, _origin: f"/p/{j}.html#s{j % 7}",
    "absolute": lambda j, origin: f"{origin}/p/{j}.html",
    "relative": lambda j, _origin: f"../p/{j}.html",
    "query": lambda j, _origin: f"/q/{j}.html?a=1&b=2",
    "query_reordered": lambda j, _origin: f"/q/{j}.html?b=2&a=1",
    "missing": lambda j, _origin: f"/missing/{j}.html",
    "offsite": lambda j, _origin: f"{OFFSITE[j % 2]}{j}",
    "mailto": lambda j, _origin: f"mailto:user{j}@example.invalid",
    "javascript": lambda j, _origin: f"javascript:void({j})",
}


def href_of(kind: str, j: int, origin: str) -> str:
    write = HREFS.get(kind)
    return "#top" if write is None else write(j, origin)


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
