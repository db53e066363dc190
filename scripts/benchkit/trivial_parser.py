"""The `--parser` of the `crawl-worker-parser` contender: one cheap item per page.

Why so little: the variant measures what running *a* user parser costs the pipeline (the page object, the call
in the pool, the item written and flushed before the ack), not what a user's own code costs; one `css_first`
on the tree that is already built is about the least a real parser does. Imported as
`benchkit.trivial_parser:parse` through the `PYTHONPATH` the harness gives the worker (scripts/ on it).
"""

from __future__ import annotations

from typing import Any


def parse(page: Any) -> dict[str, Any]:
    """One item: the page's URL and its `<h1>` (or `<title>`) text; follow requests come from `--follow`."""
    node = page.css_first("h1") or page.css_first("title")
    return {"url": page.url, "heading": node.text(strip=True) if node is not None else None}
