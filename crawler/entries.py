"""A frontier entry, as stored in Redis: "<depth> <attempts> <url>" and, only when there are any, its extras.

The extras are what travels with a URL (user data, router label, request headers, kind) as compact JSON after
the URL. Kept apart from `crawler.frontier` so the parse pool can build and check them (`Extras.encode`) without
importing the Redis client.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_DATA_BYTES = 8192  # user data of one URL, serialised: it sits in Redis for as long as the URL is queued
MAX_LABEL_CHARS = 200
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an RFC 9110 token


class InvalidExtras(ValueError):
    """User data, label, headers or kind that cannot travel with a URL; the message says why."""


@dataclass(frozen=True, slots=True)
class Extras:
    """What travels with a URL beside it: the user's data, the router label, extra request headers, its kind.

    Stored after the URL in its frontier entry as compact JSON (`"<depth> <attempts> <url> <json>"`), only when
    there is something to store: an entry without extras is as short as it ever was. A serialised URL holds no
    space and the JSON no newline (entries are split on both), so the split is exact.
    """

    data: dict[str, Any] | None = None  # JSON object, at most MAX_DATA_BYTES serialised
    label: str | None = None  # which of the user's parser functions handles the page
    headers: dict[str, str] | None = None  # extra request headers (a parser's follow request)
    kind: str | None = None  # "sitemap", ...: what the worker should do with the body

    def __post_init__(self) -> None:
        if self.data is not None and not isinstance(self.data, dict):
            raise InvalidExtras(f"data must be a JSON object, not {type(self.data).__name__}")
        for name in ("label", "kind"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL_CHARS):
                raise InvalidExtras(f"{name} must be a string of 1-{MAX_LABEL_CHARS} characters")
        for k, v in (self.headers or {}).items():
            if not isinstance(k, str) or not _HEADER_NAME.match(k):
                raise InvalidExtras(f"bad header name {k!r}")
            if not isinstance(v, str) or "\r" in v or "\n" in v or "\0" in v:
                raise InvalidExtras(f"bad value for header {k}")

    def __repr__(self) -> str:
        # header values may be secrets (Authorization, Cookie): only their names are ever printed
        shown = None if self.headers is None else sorted(self.headers)
        return f"Extras(data={self.data!r}, label={self.label!r}, headers={shown!r}, kind={self.kind!r})"

    def encode(self) -> str:
        """Compact JSON of the fields that are set; "" when none is. InvalidExtras for data too big or not JSON."""
        fields = {k: v for k in ("data", "label", "headers", "kind") if (v := getattr(self, k)) is not None}
        if not fields:
            return ""
        if self.data is not None:
            size = len(_dumps(self.data).encode())
            if size > MAX_DATA_BYTES:
                raise InvalidExtras(f"data is {size} bytes serialised, over the {MAX_DATA_BYTES}-byte limit")
        return _dumps(fields)

    @classmethod
    def decode(cls, text: str) -> Extras | None:
        """The inverse of `encode`; None for "" (no extras)."""
        if not text:
            return None
        f = json.loads(text)
        return cls(f.get("data"), f.get("label"), f.get("headers"), f.get("kind"))


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidExtras(f"not JSON-serialisable ({exc})") from None


def entry(url: str, depth: int, attempts: int = 0, extras: str = "") -> str:
    """A queued entry: "<depth> <attempts> <url>", then " <extras JSON>" only when there are extras."""
    return f"{depth} {attempts} {url} {extras}" if extras else f"{depth} {attempts} {url}"
