#!/usr/bin/env python3
"""CPU per link of the link resolver on the benchmark site's pages (issue 11: the WHATWG parser's cost).

Reads the hrefs of the first `--pages` pages of the generated benchmark site (`scripts/bench.py` makes it under
`~/.cache/crawl-bench/`) and resolves each against its page with the crawler's link resolver, cache and all, as
the parse pool does. Compare two trees by running it with their `PYTHONPATH`:

    python scripts/bench_links.py
    PYTHONPATH=<checkout of f2ec2a5> python scripts/bench_links.py   # the old hand-written normaliser
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

HREF = re.compile(r'href="([^"]*)"')


def resolver() -> Callable[[str, str], object]:
    try:
        from crawler.urls import LinkResolver  # this round: WHATWG (ada-url)

        r = LinkResolver()
        return lambda href, base: r(href, base)
    except ImportError:
        from crawler.urls import LinkNormalizer  # type: ignore[attr-defined]  # before: RFC 3986, hand-written

        n = LinkNormalizer()
        return lambda href, base: n(href, base, base.split("/p/", 1)[0])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--site", default=str(Path.home() / ".cache/crawl-bench/site-v3-20000-1-18431/www"))
    ap.add_argument("--pages", type=int, default=3000)
    args = ap.parse_args(argv)
    files = sorted(glob.glob(f"{args.site}/p/*.html"))[: args.pages]
    if not files:
        print(f"no site under {args.site}: run python scripts/bench.py once", file=sys.stderr)
        return 2
    pages = [(f"http://127.0.0.1:18431/p/{Path(f).stem}.html", HREF.findall(Path(f).read_text())) for f in files]
    links = sum(len(h) for _, h in pages)
    call = resolver()
    t0 = time.process_time()
    for base, hrefs in pages:
        for h in hrefs:
            call(h, base)
    cpu = time.process_time() - t0
    print(f"{cpu / links * 1e6:.2f} µs/link over {links} links of {len(pages)} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
