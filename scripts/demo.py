"""The README's first command: crawl a generated local site with `crawl run` on the embedded Redis.

No internet and no Redis install needed: a real HTTP site (the test suite's generated site) is served on
127.0.0.1, `crawl run` enqueues its front page and crawls until the frontier is idle, and the results land in
`demo-output/`. With `crawl` installed (`pip install .`): `python scripts/demo.py [--pages N]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from crawler.testing.services import SITE_SERVER, start_server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--output", default="demo-output")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="crawl-demo-"))
    with start_server(SITE_SERVER, "--port", 0, "--pages", args.pages, "--seed", 1) as site:
        seeds = home / "seeds.txt"
        seeds.write_text(f"{site.url}/p/0\n")
        print(f"site: {site.url} ({args.pages} pages); embedded Redis under {home / '.crawl'}", flush=True)
        cmd = [
            sys.executable,
            "-m",
            "crawler",
            "run",
            str(seeds),
            "--home",
            str(home / ".crawl"),
            "--output",
            args.output,
            "--per-host-concurrency",
            "0",
            "--log-interval",
            "1",
        ]
        print("$ crawl " + " ".join(cmd[3:]), flush=True)
        code = subprocess.call(cmd)
        if code:
            return code
        subprocess.call([sys.executable, "-m", "crawler", "stats", "--home", str(home / ".crawl")])
    files = sorted(Path(args.output).glob("*.jsonl"))
    first = json.loads(files[-1].read_text().splitlines()[0]) if files else {}
    print(f"\nresults: {', '.join(str(f) for f in files)}\nfirst record: {json.dumps(first)[:400]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
