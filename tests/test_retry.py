"""The retry policy is a pure function: a table of outcomes and the decisions they must produce."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from crawler.errors import BodyTooLarge, ConnectError, FetchTimeout, ProxyAuthError, ProxyError, TooManyRedirects
from crawler.retry import BACKOFF_CAP_S, Action, backoff_s, decide, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("kw", "action", "reason"),
    [
        ({"status": 200}, Action.DONE, None),
        ({"status": 404}, Action.DONE, None),
        ({"status": 500}, Action.DONE, None),
        ({"status": 502}, Action.RETRY_NOW, "http_502"),
        ({"status": 504}, Action.RETRY_NOW, "http_504"),
        ({"status": 503}, Action.RETRY_NOW, "http_503"),
        ({"status": 503, "retry_after": "7"}, Action.RETRY_LATER, "http_503"),
        ({"status": 429}, Action.RETRY_LATER, "http_429"),
        ({"status": 429, "attempts": 4}, Action.DEAD, "http_429"),
        ({"status": 502, "attempts": 4}, Action.DEAD, "http_502"),
        ({"status": 403}, Action.DONE, None),
        ({"status": 403, "via_proxy": True}, Action.RETRY_NOW, "banned"),
        ({"status": 200, "via_proxy": True, "banned_body": True}, Action.RETRY_NOW, "banned"),
        ({"status": 403, "via_proxy": True, "attempts": 4}, Action.DONE, "banned"),
        ({"status": 407, "via_proxy": True}, Action.RELEASE, "proxy_auth"),
        ({"status": 407}, Action.DONE, None),  # no proxy: a site's own 407 is just a status
        ({"error": ProxyAuthError("x")}, Action.RELEASE, "proxy_auth"),
        ({"error": ConnectError("x")}, Action.RETRY_NOW, "connect"),
        ({"error": FetchTimeout("x")}, Action.RETRY_NOW, "timeout"),
        ({"error": ProxyError("x")}, Action.RETRY_NOW, "proxy"),
        ({"error": ConnectError("x"), "attempts": 4}, Action.DEAD, "connect"),
        ({"error": BodyTooLarge("x")}, Action.DONE, "body_too_large"),
        ({"error": TooManyRedirects("x")}, Action.DONE, "too_many_redirects"),
    ],
)
def test_decisions(kw: dict[str, object], action: Action, reason: str | None) -> None:
    args: dict[str, object] = {"status": None, "error": None, "attempts": 1, "max_attempts": 4, "now_epoch_s": NOW}
    args.update(kw)
    d = decide(**args)  # type: ignore[arg-type]
    assert (d.action, d.reason) == (action, reason)


def test_retry_after_seconds_and_http_date_are_honoured() -> None:
    d = decide(status=429, error=None, attempts=1, max_attempts=4, retry_after="12", now_epoch_s=NOW)
    assert d.delay_s == 12
    when = format_datetime(datetime.fromtimestamp(NOW + 90, tz=UTC), usegmt=True)
    assert parse_retry_after(when, NOW) == pytest.approx(90, abs=1)
    assert parse_retry_after("garbage", NOW) is None
    assert parse_retry_after("99999999", NOW) == 3600


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    firsts = [backoff_s(1, rng) for _ in range(100)]
    assert all(0.5 <= x <= 1.0 for x in firsts) and len(set(firsts)) > 50
    assert all(2.0 <= backoff_s(3, rng) <= 4.0 for _ in range(100))
    assert all(backoff_s(50, rng) <= BACKOFF_CAP_S for _ in range(100))
    d = decide(status=429, error=None, attempts=3, max_attempts=5, now_epoch_s=NOW, rng=random.Random(2))
    assert d.action is Action.RETRY_LATER and 2.0 <= d.delay_s <= 4.0 and d.ban
