"""The parts of ``scripts/bench.py`` (and ``scripts/bench_scale_10k.py``), one module per job.

``site`` generates the static site and its reachable set; ``processes`` starts and stops the origin, the proxy
and Redis; ``measure`` runs one contender under a deadline and measures it; ``contenders`` says how each
crawler is run; ``profile`` runs py-spy over one worker pass; ``report`` aggregates and prints the tables.

Imported as a sibling package of the scripts (a script's own directory is first on ``sys.path``), so no path
is edited; the local services (Redis, the proxy, free ports, stopping processes) come from ``crawler.testing``.
"""

from __future__ import annotations

from pathlib import Path

# The repository: the default source tree the crawl contenders run, and where bench-out/ goes.
ROOT = Path(__file__).resolve().parents[2]
