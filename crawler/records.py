"""The one output record schema (one JSON object per line).

Fields from DESIGN.md, never renamed: url, final_url, status, depth, fetched_at, elapsed_ms, bytes, content_type,
title, links, error, attempts, proxy (redacted). Added: worker, links_total (distinct links before the cap),
canonical, noindex, nofollow, text_length, charset, redirects, data (extraction rules), truncated_links,
items (count of the parser's items), parser_error_detail, http_version, not_modified and changed (recurring URLs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class Record:
    url: str
    final_url: str | None
    status: int | None
    depth: int
    fetched_at: float
    elapsed_ms: float | None  # milliseconds, to 0.1 ms
    bytes: int | None
    content_type: str | None
    title: str | None
    links: list[str]
    error: str | None
    attempts: int
    proxy: str | None  # always redacted
    worker: str = ""
    links_total: int = 0
    truncated_links: bool = False
    canonical: str | None = None
    noindex: bool = False
    nofollow: bool = False
    text_length: int | None = None
    charset: str | None = None
    redirects: int = 0
    data: dict[str, Any] | None = field(default=None)
    http_version: str | None = None  # of the final response: "1.1", "2"
    not_modified: bool = False  # a recurring URL's conditional request answered 304 (no body was transferred)
    changed: bool | None = None  # a recurring URL: its body (or its items) differs from the previous pass
    items: int = 0  # items the user's parser yielded for this page (they are in items/<worker>.jsonl)
    parser_error_detail: str | None = None  # with error parser_error/parse_timeout: "KeyError: 'price'"

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies every list (the links) for nothing
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(Record))
