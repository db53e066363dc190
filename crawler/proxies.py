"""The proxy pool: which gateway URL (and sticky session) each request goes through.

A gateway URL may carry a `{session}` placeholder in its username (`http://user-session-{session}:pw@gw:8000`,
the residential-gateway convention): the pool fills it with a session id that is kept for `session_requests`
requests and rotated at once on a ban signal (403, 407, 429, a connection reset, a configured body marker).
Per-proxy health (an exponentially weighted success rate) picks the proxy: the better of two random choices.
Proxy URLs are only ever shown through `redact_url`.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from crawler.breaker import Breaker
from crawler.errors import ConfigError, GatewayUnreachable
from crawler.redact import redact_url

SESSION_PLACEHOLDER = "{session}"


def parse_proxy_url(url: str) -> str:
    """Validate a gateway URL; returns it unchanged. ConfigError (redacted) when it cannot be used."""
    probe = url.replace(SESSION_PLACEHOLDER, "s")
    try:
        parts = urlsplit(probe)
        port = parts.port
    except ValueError:
        raise ConfigError(f"malformed proxy URL {redact_url(url)}: bad port") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"proxy URL {redact_url(url)} must start with http:// (an HTTP gateway)")
    if not parts.hostname:
        raise ConfigError(f"proxy URL {redact_url(url)} has no host")
    if port is None:
        raise ConfigError(f"proxy URL {redact_url(url)} needs an explicit port")
    if parts.path not in ("", "/"):
        raise ConfigError(f"proxy URL {redact_url(url)} must not have a path")
    return url


def read_proxy_file(path: str) -> tuple[str, ...]:
    """One gateway URL per line; blank lines and # comments skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f]
    except OSError as exc:
        raise ConfigError(f"cannot read proxy file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"proxy file {path} is not UTF-8 text") from None
    return tuple(parse_proxy_url(ln) for ln in lines if ln and not ln.startswith("#"))


@dataclass(slots=True)
class ProxyState:
    """One gateway endpoint and its current sticky session."""

    template: str
    session_id: str = field(default_factory=lambda: secrets.token_hex(6))
    session_uses: int = 0
    health: float = 1.0  # EWMA of success (1) / failure (0)
    requests: int = 0
    failures: int = 0
    rotations: int = 0
    bytes: int = 0  # body bytes received through this gateway: what a residential plan bills
    breaker: Breaker = field(default_factory=Breaker)  # up/down: a down gateway gets no requests

    @property
    def url(self) -> str:
        return self.template.replace(SESSION_PLACEHOLDER, self.session_id)

    @property
    def redacted(self) -> str:
        return redact_url(self.template)

    def __repr__(self) -> str:
        return (
            f"ProxyState({self.redacted}, health={self.health:.2f}, requests={self.requests}, "
            f"failures={self.failures}, rotations={self.rotations}, {self.breaker.state})"
        )


@dataclass(frozen=True, slots=True)
class ProxyChoice:
    """What one request goes through: the URL with its session filled in, and where to report the outcome."""

    url: str
    redacted: str
    index: int
    session_id: str


class ProxyPool:
    """Hands out gateway URLs and learns from outcomes. One per worker process; not shared across processes."""

    _ALPHA = 0.05  # EWMA weight of one outcome: ~20 requests of memory

    def __init__(
        self, proxies: tuple[str, ...], session_requests: int = 0, seed: int | None = None, gateway_failures: int = 5
    ) -> None:
        # state per gateway endpoint: its sticky session, health and circuit breaker
        self._states = [ProxyState(p, breaker=Breaker(gateway_failures)) for p in proxies]
        self.session_requests = session_requests
        self._rng = random.Random(seed)

    def __bool__(self) -> bool:
        return bool(self._states)

    def __repr__(self) -> str:
        return f"ProxyPool({', '.join(repr(s) for s in self._states)})"

    @property
    def states(self) -> list[ProxyState]:
        return self._states

    def all_down(self) -> bool:
        """Gateways are configured and every one of them is down: lease nothing, fetch nothing."""
        return bool(self._states) and all(st.breaker.down for st in self._states)

    def down_count(self) -> int:
        return sum(1 for st in self._states if st.breaker.down)

    def choose(self) -> ProxyChoice | None:
        """A gateway for the next request; None when none is configured (direct).

        Raises GatewayUnreachable when every gateway is down: never falls back to a direct connection."""
        if not self._states:
            return None
        up = [i for i, st in enumerate(self._states) if not st.breaker.down]
        if not up:
            raise GatewayUnreachable("every gateway is down")
        if len(up) == 1:
            i = up[0]
        else:
            a, b = self._rng.choice(up), self._rng.choice(up)
            i = a if self._states[a].health >= self._states[b].health else b
        st = self._states[i]
        if self.session_requests and st.session_uses >= self.session_requests:
            self._rotate(st)
        st.session_uses += 1
        st.requests += 1
        return ProxyChoice(st.url, st.redacted, i, st.session_id)

    def gateway_failed(self, choice: ProxyChoice, cause: str) -> bool:
        """The gateway itself could not be reached; True when its breaker just opened."""
        return self._states[choice.index].breaker.failure(time.monotonic(), cause)

    def report(self, choice: ProxyChoice, ok: bool, ban: bool = False, nbytes: int = 0) -> None:
        """An answer came through the gateway (it is reachable); `ok` says whether it was a good one."""
        st = self._states[choice.index]
        st.breaker.success()
        st.bytes += nbytes
        st.health += self._ALPHA * ((1.0 if ok else 0.0) - st.health)
        if not ok:
            st.failures += 1
        if ban and st.session_id == choice.session_id:
            self._rotate(st)

    def _rotate(self, st: ProxyState) -> None:
        st.session_id = secrets.token_hex(6)
        st.session_uses = 0
        st.rotations += 1

    def success_rate(self) -> float | None:
        total = sum(s.requests for s in self._states)
        if not total:
            return None
        return 1.0 - sum(s.failures for s in self._states) / total
