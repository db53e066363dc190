"""Recurring URLs: periods (`--every 6h`), jitter, and the compact recurring state an entry carries.

A recurring URL's entry is the ordinary entry (crawler/entries.py) followed by a TAB and its recurring state:

    "<depth> <attempts> <url>[ <extras JSON>]\t<every_s> <gen> <last_modified_s> <digest> <etag>"

The state travels inside the entry through every queue, lease, retry, reclaim and schedule, so the lease script
hands the stored validators to the worker with the lease (no extra round trip per page) and no per-URL hash is
needed: while a URL waits for its next pass, its whole footprint is one member of the `recur` zset. A TAB is
safe as the separator: a serialised URL holds none and JSON escapes it. Empty validator fields stay empty, so a
URL that was never fetched carries `"\t<every_s> <gen>"` only. `gen` is the schedule generation the URL was
enqueued under: `crawl schedule --all` bumps the crawl's generation, which ends every schedule at its next
ack, queued or leased ones included, in O(1).

Last-Modified is kept as epoch seconds (10 bytes instead of 29) and given back as an IMF-fixdate, which is the
form RFC 9110 says senders must use; a server compares the date, not the spelling.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

MIN_EVERY_S = 1
MAX_EVERY_S = 366 * 86400
JITTER = 0.1  # a pass is due `every` after the fetch, give or take up to 10% of the period
MAX_ETAG_CHARS = 200  # a longer one is not kept (it would cost Redis more than the body it saves)
MAX_DIGEST_CHARS = 64
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


class InvalidDuration(ValueError):
    """A period that cannot be parsed or is out of range; the message says why."""


def parse_duration(text: object) -> int:
    """Seconds of a period: `30s`, `15m`, `6h`, `1d`, `1w`, combinations (`1h30m`), or plain seconds (`90`).

    InvalidDuration unless it is a whole number of seconds from MIN_EVERY_S to MAX_EVERY_S."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    elif not isinstance(text, str):
        raise InvalidDuration(f"bad duration {text!r}: use e.g. 30s, 15m, 6h, 1d or a whole number of seconds")
    else:
        s = text.strip().lower()
        if s.isdigit():
            seconds = int(s)
        elif _full(s):
            seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(s))
        else:
            raise InvalidDuration(f"bad duration {text!r}: use e.g. 30s, 15m, 6h, 1d or 1h30m")
    if not MIN_EVERY_S <= seconds <= MAX_EVERY_S:
        raise InvalidDuration(f"duration {text!r} out of range ({MIN_EVERY_S}s to {MAX_EVERY_S // 86400}d)")
    return seconds


def _full(s: str) -> bool:
    """True when `s` is made only of number+unit pairs (`1h30m`)."""
    return bool(s) and "".join(m.group(0) for m in _DURATION.finditer(s)) == s


def format_duration(seconds: int) -> str:
    """The shortest exact spelling: 90 -> `1m30s`, 86400 -> `1d`."""
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"


def next_due_ms(now_ms: int, every_s: int, rng: random.Random | None = None) -> int:
    """When the next pass is due: `every_s` after now, jittered by up to JITTER of the period either way, so a
    list enqueued in one second spreads out over the following passes instead of coming due in one burst."""
    r = (rng or random).uniform(-JITTER, JITTER)
    return now_ms + int(every_s * 1000 * (1 + r))


@dataclass(frozen=True, slots=True)
class Validators:
    """What the worker learnt from a recurring URL's response, to store for the next pass.

    `etag` and `last_modified` as the response headers gave them (None: absent); `digest` of the body (or of
    the parser's items), a short string without spaces, compared by the worker to say `changed`."""

    etag: str | None = None
    last_modified: str | None = None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class RecurState:
    """A recurring URL's schedule and stored validators, as carried by its entry (see the module docstring)."""

    every_s: int
    gen: int = 0
    etag: str | None = None
    last_modified_s: int | None = None  # epoch seconds of the stored Last-Modified
    digest: str | None = None

    @property
    def last_modified(self) -> str | None:
        """The stored Last-Modified as an IMF-fixdate, ready for If-Modified-Since."""
        return None if self.last_modified_s is None else formatdate(self.last_modified_s, usegmt=True)

    def conditional_headers(self) -> dict[str, str]:
        """If-None-Match / If-Modified-Since for this pass's request, from the stored validators ({} for none)."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def changed(self, digest: str | None) -> bool:
        """Whether this pass's content differs from the previous one's: True on a first pass (nothing stored)."""
        return self.digest is None or digest != self.digest

    def encode(self) -> str:
        """The text after the TAB. Fields: every_s gen last_modified_s digest etag (etag last: it may hold any
        visible character)."""
        head = f"{self.every_s} {self.gen}"
        if self.etag is None and self.last_modified_s is None and self.digest is None:
            return head
        lm = "" if self.last_modified_s is None else str(self.last_modified_s)
        return f"{head} {lm} {self.digest or ''} {self.etag or ''}"

    @classmethod
    def decode(cls, text: str) -> RecurState:
        parts = text.split(" ", 4)
        every, gen = int(parts[0]), int(parts[1])
        if len(parts) < 5:
            return cls(every, gen)
        lm, digest, etag = parts[2], parts[3], parts[4]
        return cls(every, gen, etag or None, int(lm) if lm else None, digest or None)

    def with_validators(self, v: Validators) -> RecurState:
        """This schedule with the validators of the latest response (unusable ones dropped, never raised)."""
        return RecurState(self.every_s, self.gen, _clean_etag(v.etag), _epoch_s(v.last_modified), _clean(v.digest))


def body_digest(data: bytes) -> str:
    """The digest to store for `changed`: 64 bits of BLAKE2b as 16 hex digits (a false "unchanged" needs a
    2^-64 collision). hashlib releases the GIL on big inputs; call it in the parse pool or a thread for bodies
    of megabytes, or feed `hashlib.blake2b(digest_size=8)` chunk by chunk while streaming."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def recur_tail(every_s: int) -> str:
    """What a newly enqueued recurring entry carries after its extras: the add script appends the generation."""
    return f"\t{every_s}"


def _clean_etag(etag: str | None) -> str | None:
    if not etag or len(etag) > MAX_ETAG_CHARS or any(c in etag for c in "\t\r\n\0"):
        return None
    return etag.strip() or None


def _clean(digest: str | None) -> str | None:
    if not digest or len(digest) > MAX_DIGEST_CHARS or any(c.isspace() for c in digest):
        return None
    return digest


def _epoch_s(http_date: str | None) -> int | None:
    if not http_date:
        return None
    try:
        return int(parsedate_to_datetime(http_date).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
