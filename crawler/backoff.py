"""The one backoff helper: exponential waits between tries against a dependency that is away (Redis, a gateway).

Every loop that retries an infrastructure call uses a `Backoff`: it starts short (an outage of a few
milliseconds costs almost nothing), doubles up to a cap, and resets on the first success. `wait()` sleeps, but
wakes early when the given event is set, so a stopping worker never sits out a long backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    first_s: float = 0.05
    cap_s: float = 5.0
    delay_s: float = 0.0  # the wait the next `wait()` takes; 0 until the first failure

    def failed(self) -> float:
        """Record a failure; returns the wait before the next try."""
        self.delay_s = self.first_s if self.delay_s == 0 else min(self.cap_s, self.delay_s * 2)
        return self.delay_s

    def reset(self) -> None:
        self.delay_s = 0.0

    async def wait(self, until: asyncio.Event | None = None) -> bool:
        """Sleep the current delay, or less if `until` is set first; True when `until` is set."""
        return await pause(self.delay_s, until)


async def pause(seconds: float, until: asyncio.Event | None) -> bool:
    """Sleep `seconds` or until `until` is set; True when it is (time to leave the loop)."""
    if until is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until.wait(), seconds)
    return until.is_set()
