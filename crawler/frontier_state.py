"""The frontier's values: what a commit settles (`Settlement` and its parts), what the counters say
(`Counters`), what the dead set and the schedule hold (`DeadEntry`, `Scheduled`), and the politeness the lease
script applies (`Politeness`). Plain frozen dataclasses, no Redis: `crawler.frontier` re-exports them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crawler.entries import Extras, Lease, NewLink
from crawler.schedule import RecurState, Validators


def now_ms() -> int:
    """Epoch milliseconds, the unit of every score in the frontier (lease deadlines, due times)."""
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Deferral:
    """Retry later: the lease, when it is due (epoch s), and the attempts made so far."""

    lease: Lease
    due_s: float
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: the lease, the attempts made, and the last error (a small JSON-able dict: kind, status, ...)."""

    lease: Lease
    attempts: int
    error: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Settlement:
    """Everything one commit settles, in one round trip (`Frontier.settle`).

    `validators` (lease member -> Validators) are stored for the next pass of the recurring leases in `done`; a
    recurring lease acked without an entry keeps its stored validators (a 304). Ignored for other leases."""

    done: Sequence[Lease] = ()
    links: Sequence[NewLink] = ()
    deferred: Sequence[Deferral] = ()
    dead: Sequence[DeadLetter] = ()
    released: Sequence[Lease] = ()
    validators: Mapping[str, Validators] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.done or self.links or self.deferred or self.dead or self.released)

    @property
    def leases(self) -> list[Lease]:
        """Every lease this settlement ends (acked, deferred, dead or handed back)."""
        return [*self.done, *(d.lease for d in self.deferred), *(d.lease for d in self.dead), *self.released]


@dataclass(frozen=True, slots=True)
class Counters:
    enqueued: int
    queued: int
    deferred: int
    inflight: int
    done: int
    dead: int
    retried: int
    scheduled: int = 0  # recurring URLs waiting for their next pass
    recurring: int = 0  # URLs with a live schedule (scheduled, or in a pass now)
    passes: int = 0  # recurring passes acked
    failed_passes: int = 0  # recurring passes dead-lettered (the URL stays scheduled)
    due: int = 0  # scheduled URLs whose next pass is due now
    next_pass_ms: int | None = None  # when the earliest scheduled pass is due (None: nothing scheduled)

    @property
    def consistent(self) -> bool:
        return self.enqueued == self.done + self.dead + self.queued + self.deferred + self.inflight + self.scheduled

    @property
    def idle(self) -> bool:
        """Nothing queued, deferred or leased anywhere in the crawl (recurring URLs may wait: see idle_within)."""
        return self.queued == 0 and self.deferred == 0 and self.inflight == 0

    def idle_within(self, horizon_s: float, at_ms: int | None = None) -> bool:
        """`--until-idle` with `--idle-horizon`: idle, and no recurring pass due before `horizon_s` from now."""
        if not self.idle:
            return False
        now = now_ms() if at_ms is None else at_ms
        return self.next_pass_ms is None or self.next_pass_ms > now + int(horizon_s * 1000)


@dataclass(frozen=True, slots=True)
class DeadEntry:
    url: str
    depth: int
    attempts: int
    at_ms: int
    error: dict[str, Any]
    extras: Extras | None = None


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A recurring URL waiting for its next pass (`Frontier.scheduled`)."""

    url: str
    due_ms: int
    depth: int
    recur: RecurState
    extras_json: str = ""

    @classmethod
    def of(cls, stored: str, due_ms: int) -> Scheduled:
        ls = Lease.from_member("- " + stored)  # a stored entry is a lease member without its token
        assert ls.recur is not None
        return cls(ls.url, due_ms, ls.depth, ls.recur, ls.extras_json)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _recurring_url(stored: str) -> str | None:
    """The URL of a stored entry when it recurs, else None."""
    ls = Lease.from_member("- " + stored)
    return ls.url if ls.recur_text else None


@dataclass(frozen=True, slots=True)
class Politeness:
    per_host_concurrency: int = 0  # 0: unlimited
    per_host_delay_ms: int = 0
