"""A circuit breaker per gateway: an unreachable gateway is not the pages' fault.

Closed (up): requests go through; each success resets the count of consecutive gateway failures. After
`threshold` failures in a row (connection refused or reset by the gateway itself, a failed tunnel set-up), it
opens (down): no request is sent through that gateway, the URLs that hit it are handed back without spending an
attempt, and the worker leases nothing while every gateway is down. The housekeeping stage probes a down
gateway (a TCP connect) with backoff, and the first success closes the breaker.

Pure state, no I/O and no clock of its own (callers pass `now`), so it is tested without a network.
"""

from __future__ import annotations

from dataclasses import dataclass

PROBE_FIRST_S = 0.25
PROBE_CAP_S = 2.0  # a gateway that comes back is in use again within this (plus one probe's time)


@dataclass(slots=True)
class Breaker:
    threshold: int = 5
    consecutive: int = 0  # gateway failures in a row
    down_since: float | None = None  # monotonic time it opened; None while up
    next_probe_at: float = 0.0
    probe_wait_s: float = PROBE_FIRST_S
    last_cause: str = ""

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @property
    def state(self) -> str:
        return "down" if self.down else "up"

    def failure(self, now: float, cause: str) -> bool:
        """One gateway failure; True when this one opened the breaker (say so once)."""
        self.consecutive += 1
        self.last_cause = cause
        if self.down or self.consecutive < self.threshold:
            return False
        self.down_since = now
        self.probe_wait_s = PROBE_FIRST_S
        self.next_probe_at = now + self.probe_wait_s
        return True

    def success(self) -> None:
        """A request through the gateway got an answer (any HTTP status): it is reachable."""
        self.consecutive = 0

    def probe_due(self, now: float) -> bool:
        return self.down and now >= self.next_probe_at

    def probe_failed(self, now: float) -> None:
        self.probe_wait_s = min(PROBE_CAP_S, self.probe_wait_s * 2)
        self.next_probe_at = now + self.probe_wait_s

    def close(self, now: float) -> float:
        """A probe reached the gateway: up again. Returns how long it was down (seconds)."""
        downtime = now - (self.down_since if self.down_since is not None else now)
        self.down_since = None
        self.consecutive = 0
        return downtime
