"""Both fetchers, for the end-to-end tests that prove the fetch layer's guarantees (hostile servers, SSRF,
secrets): `@pytest.fixture(params=FETCHERS)` and `*fetcher_flags(request.param)` in the worker's arguments.

The curl case is skipped while the CLI has no `--fetcher` (the settings field is declared on another branch);
once it exists the same tests run through `make_fetcher`'s curl fetcher.
"""

from __future__ import annotations

from dataclasses import fields

import pytest

from crawler.settings import Settings

CLI_HAS_FETCHER = "fetcher" in {f.name for f in fields(Settings)}
FETCHERS = [
    "aiohttp",
    pytest.param("curl", marks=pytest.mark.skipif(not CLI_HAS_FETCHER, reason="no --fetcher setting yet")),
]


def fetcher_flags(name: str) -> tuple[str, ...]:
    """The worker flags that select `name` (none for the default when the flag does not exist yet)."""
    return ("--fetcher", name) if CLI_HAS_FETCHER else ()
