"""The one retry policy: every fetch outcome is classified here, as a pure function (no I/O, no clock).

| outcome                                   | action                                                   |
|-------------------------------------------|----------------------------------------------------------|
| 2xx/3xx/other 4xx/5xx answers             | DONE: a result record with that status                   |
| connection error, gateway 502/504, 503    | RETRY_NOW with a fresh proxy session (tenacity, in process) |
| 429; 503 with Retry-After                 | RETRY_LATER through the frontier's deferred set, honouring |
|                                           | Retry-After, else exponential backoff with jitter        |
| 403 or a ban marker, through a proxy      | RETRY_NOW with a fresh session (a block, not the page)   |
| 407 from the gateway                      | RELEASE: a configuration error, never a result           |
| body too large, redirect loop, blocked,   | DONE with `error` set (permanent: retrying cannot help)  |
| a URL the HTTP client refuses             |                                                          |
| any retryable outcome on the last attempt | DEAD with the last error                                 |
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from crawler.errors import (
    BlockedAddress,
    BodyTooLarge,
    FetchError,
    InvalidTarget,
    ProxyAuthError,
    TooManyRedirects,
)

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
RETRY_AFTER_CAP_S = 3600.0


class Action(enum.Enum):
    DONE = "done"
    RETRY_NOW = "retry_now"
    RETRY_LATER = "retry_later"
    RELEASE = "release"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str | None = None  # error kind for records, metrics and the dead-letter set
    delay_s: float = 0.0  # for RETRY_LATER
    ban: bool = False  # rotate the proxy session


_PERMANENT: tuple[type[FetchError], ...] = (BodyTooLarge, TooManyRedirects, BlockedAddress, InvalidTarget)


def parse_retry_after(value: str | None, now_epoch_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return min(max(0.0, when.timestamp() - now_epoch_s), RETRY_AFTER_CAP_S)


def backoff_s(attempts: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^(attempts-1), capped, scaled by a random factor in [0.5, 1]."""
    raw = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** max(0, attempts - 1))
    return raw * (0.5 + rng.random() / 2)


def decide(
    *,
    status: int | None,
    error: FetchError | None,
    attempts: int,
    max_attempts: int,
    retry_after: str | None = None,
    now_epoch_s: float = 0.0,
    via_proxy: bool = False,
    banned_body: bool = False,
    rng: random.Random | None = None,
) -> Decision:
    """Classify the outcome of attempt number `attempts` (1-based) of a URL allowed `max_attempts` in total."""
    rng = rng or random.Random()
    last = attempts >= max_attempts
    if isinstance(error, ProxyAuthError) or (via_proxy and status == 407):
        return Decision(Action.RELEASE, "proxy_auth", ban=True)
    if error is not None:
        if isinstance(error, _PERMANENT):
            return Decision(Action.DONE, error.kind)
        if last:
            return Decision(Action.DEAD, error.kind)
        return Decision(Action.RETRY_NOW, error.kind, ban=True)
    assert status is not None
    if status == 429 or (status == 503 and retry_after):
        if last:
            return Decision(Action.DEAD, f"http_{status}")
        wait = parse_retry_after(retry_after, now_epoch_s)
        return Decision(
            Action.RETRY_LATER,
            f"http_{status}",
            wait if wait is not None else backoff_s(attempts, rng),
            ban=status == 429,
        )
    if status in (502, 503, 504):
        if last:
            return Decision(Action.DEAD, f"http_{status}")
        return Decision(Action.RETRY_NOW, f"http_{status}", ban=True)
    if via_proxy and (status == 403 or banned_body):
        if last:
            return Decision(Action.DONE, "banned")  # keep what we saw: the site may really say 403
        return Decision(Action.RETRY_NOW, "banned", ban=True)
    return Decision(Action.DONE)
