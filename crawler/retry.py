"""The one retry policy: every fetch outcome is classified here, as a pure function (no I/O, no clock).

| outcome                                   | action                                                   |
|-------------------------------------------|----------------------------------------------------------|
| 2xx/3xx/other 4xx/5xx answers             | DONE: a result record with that status                   |
| connection error, gateway 502/504, 503    | RETRY_NOW with a fresh proxy session (tenacity, in process) |
| 429; 503 with Retry-After                 | RETRY_LATER through the frontier's deferred set, honouring |
|                                           | Retry-After, else exponential backoff with jitter        |
| 403 or a ban marker, through a proxy      | RETRY_NOW with a fresh session (a block, not the page)   |
| 407 from the gateway                      | RELEASE: a configuration error, never a result           |
| the gateway itself unreachable            | RELEASE without an attempt; its circuit breaker counts it |
| body too large, redirect loop, blocked,   | DONE with `error` set (permanent: retrying cannot help)  |
| a URL the HTTP client refuses             |                                                          |
| any retryable outcome on the last attempt | DEAD with the last error                                 |
| retries left after the in-process tries   | RETRY_LATER in 1-2 s through the frontier (`conclude`)    |
| robots.txt unreachable                    | RETRY_LATER in 60 s, naming the cause (`robots_unreachable`) |
| five 407s in a row                        | the worker stops with exit 3 (`ProxyAuthStreak`)          |

The worker executes decisions; it never makes them. Infrastructure faults (Redis away, a gateway that is down)
are not outcomes of a URL and never reach this module: their leases are handed back without an attempt.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from crawler.errors import (
    BlockedAddress,
    BodyTooLarge,
    FetchError,
    GatewayUnreachable,
    InvalidTarget,
    ProxyAuthError,
    TooManyRedirects,
)

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
RETRY_AFTER_CAP_S = 3600.0
ROBOTS_RETRY_S = 60.0  # RFC 9309 2.3.1.3: an unreachable robots.txt means "not now"
PROXY_AUTH_FATAL = 5  # consecutive 407s that stop the worker: the credentials are wrong


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


PROXY_AUTH = Decision(Action.RELEASE, "proxy_auth", ban=True)  # a 407: the credentials, never the URL
GATEWAY_DOWN = Decision(Action.RELEASE, "gateway_down")  # the gateway cannot be reached: not the URL's fault

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
    if isinstance(error, ProxyAuthError) or (via_proxy and status == 407):
        return PROXY_AUTH
    if isinstance(error, GatewayUnreachable):
        return GATEWAY_DOWN
    if isinstance(error, _PERMANENT):
        return Decision(Action.DONE, error.kind)
    if error is not None:
        wanted = Decision(Action.RETRY_NOW, error.kind, ban=True)
    elif status == 429 or (status == 503 and retry_after):
        wait = parse_retry_after(retry_after, now_epoch_s)
        delay = wait if wait is not None else backoff_s(attempts, rng)
        wanted = Decision(Action.RETRY_LATER, f"http_{status}", delay, ban=status == 429)
    elif status in (502, 503, 504):
        wanted = Decision(Action.RETRY_NOW, f"http_{status}", ban=True)
    elif via_proxy and (status == 403 or banned_body):
        wanted = Decision(Action.RETRY_NOW, "banned", ban=True)
    else:
        return Decision(Action.DONE)
    if attempts < max_attempts:
        return wanted
    # the last attempt: a block keeps what we saw (the site may really say 403); everything else is dead
    return Decision(Action.DONE if wanted.reason == "banned" else Action.DEAD, wanted.reason)


def conclude(decision: Decision, attempts: int, max_attempts: int, rng: random.Random) -> Decision:
    """The final decision for a lease once the in-process tries are over.

    A RETRY_NOW left over (in-process tries ran out with attempts to spare) goes through the frontier in 1-2 s; a
    RETRY_LATER on the last attempt is DEAD. Everything else stands.
    """
    if decision.action is Action.RETRY_NOW:
        decision = Decision(Action.RETRY_LATER, decision.reason, 1.0 + rng.random(), decision.ban)
    if decision.action is Action.RETRY_LATER and attempts >= max_attempts:
        return Decision(Action.DEAD, decision.reason)
    return decision


def robots_unreachable(cause: FetchError | None, attempts: int, max_attempts: int, rng: random.Random) -> Decision:
    """robots.txt could not be read: the decision for the URL waiting on it.

    With no answer at all (`cause`: connection refused, timeout, ...), the site is as unreachable for the page as
    for robots.txt: decided like a failed fetch of the page, so the record or dead letter names the real cause.
    A 5xx answer means "not now" (RFC 9309 2.3.1.3): the URL is retried later.
    """
    if cause is not None:
        return decide(status=None, error=cause, attempts=attempts, max_attempts=max_attempts, rng=rng)
    return conclude(Decision(Action.RETRY_LATER, "robots_unreachable", ROBOTS_RETRY_S), attempts, max_attempts, rng)


class ProxyAuthStreak:
    """Counts consecutive 407s from the gateway: after PROXY_AUTH_FATAL in a row the credentials are wrong."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def observe(self, decision: Decision) -> bool:
        """Record one final decision; True when the streak says stop (exit 3)."""
        if decision.action is Action.RELEASE and decision.reason == "proxy_auth":
            self.count += 1
        else:
            self.count = 0
        return self.count >= PROXY_AUTH_FATAL


class RetryNow(Exception):
    """Raised inside the in-process retry loop to ask tenacity for another try (carries nothing)."""


def in_process_retrying(tries: int) -> AsyncRetrying:
    """The schedule of in-process retries (each with a fresh proxy session): short, jittered, bounded."""
    return AsyncRetrying(
        stop=stop_after_attempt(tries),
        wait=wait_random_exponential(multiplier=0.05, max=1.0),
        retry=retry_if_exception_type(RetryNow),
        reraise=True,
    )
