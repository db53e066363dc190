"""Masking of secrets: proxy and Redis URLs are only ever printed through `redact_url`."""

from __future__ import annotations

import re
from collections.abc import Iterable

# user-info runs to the LAST "@" of the authority, as urlsplit (and so aiohttp and redis-py) read it
_USERINFO = re.compile(
    r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:@/]*)(?::(?P<pw>[^/]*))?@(?=[^@/]*(?:/|$))"
)


def redact_url(url: str) -> str:
    """`http://user:secret@host:port` -> `http://user:***@host:port`; a URL without a password is unchanged.

    A malformed URL whose user-info cannot be told apart (a raw "/" in the password) keeps only its scheme and
    what follows the last "@": nothing that might be a secret is printed."""
    m = _USERINFO.match(url)
    if m and m.group("pw") is not None:
        return f"{m.group('scheme')}{m.group('user')}:***@{url[m.end() :]}"
    if m is None and "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        if ":" in rest.rsplit("@", 1)[0]:
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove every known secret from free text (error messages from libraries may echo a URL)."""
    for s in secrets:
        if s and len(s) >= 3:
            text = text.replace(s, "***")
    return text


def url_password(url: str) -> str | None:
    m = _USERINFO.match(url)
    if m:
        return m.group("pw")
    if "@" in url and "://" in url:  # malformed: everything between the first ":" and the last "@"
        userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
        return userinfo.split(":", 1)[1] if ":" in userinfo else None
    return None
