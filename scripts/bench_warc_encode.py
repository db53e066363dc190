#!/usr/bin/env python3
"""CPU per page of building a page's WARC records (issue 15), alone on one core, and what it is made of.

Encodes the first `--pages` pages of the generated benchmark site (`scripts/bench.py` makes it under
`~/.cache/crawl-bench/`) as the parse processes do (`crawler.warc.encode`: a response and a request record, each
its own ISA-L gzip member, both SHA-1 digests), and times the parts that cannot be skipped: the gzip of the body
and the two SHA-1 passes. Inside a crawl the same work costs more (the cores' caches are shared with the parse,
the proxy and the site); this is the floor.

    python scripts/bench_warc_encode.py
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from isal import isal_zlib

from crawler.warc import GZIP_LEVEL, GZIP_WBITS, WarcExchange, encode

RESPONSE_HEADERS = (
    ("Server", "nginx"),
    ("Date", "Tue, 01 Dec 2026 12:00:00 GMT"),
    ("Content-Type", "text/html"),
    ("Content-Length", "52000"),
    ("Last-Modified", "Tue, 01 Dec 2026 11:35:00 GMT"),
    ("Connection", "keep-alive"),
    ("ETag", '"abc-123"'),
    ("Accept-Ranges", "bytes"),
)
REQUEST_HEADERS = (("Host", "127.0.0.1:18431"), ("User-Agent", "crawl"), ("Accept", "*/*"), ("Accept-Encoding", "gzip"))


T = TypeVar("T")


def per_page_us(items: Sequence[T], fn: Callable[[T], object], rounds: int) -> float:
    """Best of `rounds` passes, CPU time per item in µs (the best pass is the one least disturbed)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - t0)
    return best / len(items) * 1e6


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--site", default=str(Path.home() / ".cache/crawl-bench/site-v3-20000-1-18431/www"))
    ap.add_argument("--pages", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    files = sorted(glob.glob(f"{args.site}/p/*.html"))[: args.pages]
    if not files:
        print(f"no pages under {args.site}: run scripts/bench.py once to generate the site", file=sys.stderr)
        return 2
    bodies = [Path(f).read_bytes() for f in files]
    now = datetime.now(UTC)
    exchanges = [
        WarcExchange(f"http://127.0.0.1:18431/p/{i}.html", now, "GET", REQUEST_HEADERS, "1.1", 200, "OK",
                     RESPONSE_HEADERS, body)
        for i, body in enumerate(bodies)
    ]  # fmt: skip
    mean_kb = sum(map(len, bodies)) / len(bodies) / 1000
    encoded = [encode([ex]) for ex in exchanges]
    assert all(e is not None for e in encoded)
    out_kb = sum(len(e.data) for e in encoded if e is not None) / len(encoded) / 1000
    whole = per_page_us(exchanges, lambda ex: encode([ex]), args.rounds)
    gzip_us = per_page_us(bodies, lambda b: isal_zlib.compress(b, GZIP_LEVEL, GZIP_WBITS), args.rounds)
    sha_us = per_page_us(bodies, lambda b: (hashlib.sha1(b).digest(), hashlib.sha1(b).digest()), args.rounds)
    print(f"{len(bodies)} pages, {mean_kb:.1f} KB mean -> {out_kb:.1f} KB of WARC a page")
    print(f"records of a page (response + request): {whole:.0f} µs")
    print(f"  of which gzip of the body (ISA-L level {GZIP_LEVEL}): {gzip_us:.0f} µs")
    print(f"  of which two SHA-1 passes over the body: {sha_us:.0f} µs")
    print(f"  the rest (warcio, headers, the request record): {whole - gzip_us - sha_us:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
