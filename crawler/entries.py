"""A frontier entry, as stored in Redis: "<depth> <attempts> <url>" and, only when there are any, its extras;
and the two views of one the rest of the code holds: a `Lease` (an entry leased by a consumer) and a `NewLink`
(an entry to add).

The extras are what travels with a URL (user data, router label, request headers, kind) as compact JSON after
the URL. Kept apart from `crawler.frontier` so the parse pool can build and check them (`Extras.encode`) without
importing the Redis client.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

from crawler.schedule import RecurState, Validators
from crawler.urls import CrawlURL

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
    nesting: int | None = None  # a child sitemap: how many indexes above it (a seed sitemap is 0, and not stored)
    for_host: str | None = None  # a sitemap named by another host's robots.txt: the host its URLs must be on

    def __post_init__(self) -> None:
        if self.data is not None and not isinstance(self.data, dict):
            raise InvalidExtras(f"data must be a JSON object, not {type(self.data).__name__}")
        if self.for_host is not None and (not isinstance(self.for_host, str) or not 0 < len(self.for_host) <= 300):
            raise InvalidExtras("for_host must be a host[:port] of 1-300 characters")  # a DNS name is at most 253
        for name in ("label", "kind"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL_CHARS):
                raise InvalidExtras(f"{name} must be a string of 1-{MAX_LABEL_CHARS} characters")
        if self.nesting is not None and (type(self.nesting) is not int or not 0 <= self.nesting <= 100):
            raise InvalidExtras("nesting must be an integer from 0 to 100")
        for k, v in (self.headers or {}).items():
            if not isinstance(k, str) or not _HEADER_NAME.match(k):
                raise InvalidExtras(f"bad header name {k!r}")
            if not isinstance(v, str) or "\r" in v or "\n" in v or "\0" in v:
                raise InvalidExtras(f"bad value for header {k}")

    def __repr__(self) -> str:
        # header values may be secrets (Authorization, Cookie): only their names are ever printed
        shown = None if self.headers is None else sorted(self.headers)
        tail = f", nesting={self.nesting}" if self.nesting is not None else ""
        tail += f", for_host={self.for_host!r}" if self.for_host is not None else ""
        return f"Extras(data={self.data!r}, label={self.label!r}, headers={shown!r}, kind={self.kind!r}{tail})"

    def encode(self) -> str:
        """Compact JSON of the fields that are set; "" when none is. InvalidExtras for data too big or not JSON."""
        fields = {k: v for k in _EXTRAS_FIELDS if (v := getattr(self, k)) is not None}
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
        return cls(**{k: f.get(k) for k in _EXTRAS_FIELDS})


_EXTRAS_FIELDS = tuple(f.name for f in fields(Extras))  # what encode writes and decode reads, in order


def _dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidExtras(f"not JSON-serialisable ({exc})") from None


def entry(url: str, depth: int, attempts: int = 0, extras: str = "") -> str:
    """A queued entry: "<depth> <attempts> <url>", then " <extras JSON>" only when there are extras."""
    return f"{depth} {attempts} {url} {extras}" if extras else f"{depth} {attempts} {url}"


_UNPARSED: Any = object()


@dataclass(frozen=True, slots=True)
class Lease:
    """One leased URL. `member` is the lease's identity in Redis; hand it back to ack/release/defer/dead.

    `extras_json` (user data, label, headers, kind, as stored; "" for none) comes back exactly as it was added,
    through every retry, release, reclaim, dead-letter and requeue: the Lua scripts keep the entry's tail as it
    is. It is decoded on first use of `extras` (or `data`, `label`, ...), not at lease time: a batch of big
    user data is not parsed on the event loop unless asked for. Hand `extras_json` to the parse pool as it is.

    A recurring URL's lease also carries its schedule and the validators stored by its previous pass (`recur`),
    in the member itself: no extra round trip per page. Ack it with `Settlement.validators[member]` to store new
    ones; without, the stored ones stay (a 304).
    """

    member: str
    url: str
    depth: int
    attempts: int  # fetch attempts already made before this lease
    extras_json: str = ""
    _extras: Any = field(default=_UNPARSED, compare=False, repr=False)  # the decoded extras, once asked for
    recur_text: str = ""  # a recurring URL's state as stored (crawler/schedule.py); "" for a URL that does not recur

    @classmethod
    def from_member(cls, member: str) -> Lease:
        _token, depth, attempts, rest = member.split(" ", 3)
        rest, _, recur = rest.partition("\t")
        url, _, tail = rest.partition(" ")
        return cls(member, url, int(depth), int(attempts), tail, recur_text=recur)

    @property
    def recur(self) -> RecurState | None:
        """The schedule and stored validators of a recurring URL (send If-None-Match / If-Modified-Since from
        them, compare `digest` to say `changed`); None for a URL that does not recur."""
        return RecurState.decode(self.recur_text) if self.recur_text else None

    def next_pass_entry(self, validators: Validators | None = None) -> str:
        """The entry of this recurring URL's next pass: a fresh attempt count, its extras, and the validators
        given (None: the stored ones are kept, as for a 304)."""
        state = self.recur
        assert state is not None, "not a recurring lease"
        if validators is not None:
            state = state.with_validators(validators)
        return entry(self.url, self.depth, 0, self.extras_json) + "\t" + state.encode()

    @property
    def extras(self) -> Extras | None:
        if self._extras is _UNPARSED:
            object.__setattr__(self, "_extras", Extras.decode(self.extras_json))  # a cache, not a change
        cached: Extras | None = self._extras
        return cached

    @property
    def data(self) -> dict[str, Any] | None:
        return self.extras.data if self.extras else None

    @property
    def label(self) -> str | None:
        return self.extras.label if self.extras else None

    @property
    def headers(self) -> dict[str, str] | None:
        return self.extras.headers if self.extras else None

    @property
    def kind(self) -> str | None:
        return self.extras.kind if self.extras else None

    @property
    def is_sitemap(self) -> bool:
        """A sitemap's lease (its extras decoded only when they hold a kind: no JSON work for the rest)."""
        return '"kind"' in self.extras_json and self.kind == "sitemap"


@dataclass(frozen=True, slots=True)
class NewLink:
    """A URL found on a page (or yielded by a parser), ready for the frontier: fetch URL, its host, the
    fingerprint of its dedup key and its extras as stored JSON, all made in the parse pool (`NewLink.of`), so
    the event loop only joins strings. `front` puts it at the head of its host's queue."""

    fingerprint: bytes
    host: str
    url: str
    depth: int
    extras_json: str = ""
    front: bool = False

    @classmethod
    def of(cls, n: CrawlURL, depth: int, extras: Extras | None = None, front: bool = False) -> NewLink:
        """InvalidExtras when the extras cannot travel (data over MAX_DATA_BYTES, not JSON, bad headers)."""
        return cls(n.fingerprint, n.host, n.url, depth, extras.encode() if extras else "", front)

    @property
    def extras(self) -> Extras | None:
        return Extras.decode(self.extras_json)
