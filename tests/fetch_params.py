"""Both fetchers, for the end-to-end tests that prove the fetch layer's guarantees (hostile servers, SSRF,
secrets): `@pytest.fixture(params=FETCHERS)` and `*fetcher_flags(request.param)` in the worker's arguments."""

from __future__ import annotations

FETCHERS = ["aiohttp", "curl"]


def fetcher_flags(name: str) -> tuple[str, ...]:
    """The worker flags that select `name`."""
    return ("--fetcher", name)
