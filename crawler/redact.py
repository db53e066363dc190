"""Masking of secrets: proxy and Redis URLs are only ever printed through `redact_url`."""

from __future__ import annotations

import re
from collections.abc import Iterable

# user-info runs to the LAST "@" of the authority, as urlsplit (and so aiohttp and redis-py) read it
_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:@/]*)(?::(?P<pw>[^/]*))?@(?=[^@/]*(?:/|$))")


def redact_url(url: str) -> str:
    """`http://user:secret@host:port` -> `http://user:***@host:port`; a URL without a password is unchanged."""
    m = _USERINFO.match(url)
    if not m or m.group("pw") is None:
        # redis://:pw@host has an empty user and a password; redis://pw@host (user only) is left as is
        return url
    return f"{m.group('scheme')}{m.group('user')}:***@{url[m.end() :]}"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove every known secret from free text (error messages from libraries may echo a URL)."""
    for s in secrets:
        if s and len(s) >= 3:
            text = text.replace(s, "***")
    return text


def url_password(url: str) -> str | None:
    m = _USERINFO.match(url)
    return m.group("pw") if m else None
