"""What the processing stage hands the committer: one `Outcome` per lease, turned into one `Settlement`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crawler.frontier import DeadLetter, Deferral, Lease, NewLink, Settlement
from crawler.records import Record
from crawler.retry import Action
from crawler.warc import WarcExchange


@dataclass(slots=True)
class Outcome:
    """The end of one lease in this worker: DONE (with its record), RETRY_LATER, DEAD or RELEASE (no attempt)."""

    lease: Lease
    action: Action
    attempts: int
    record: Record | None = None
    links: list[NewLink] = field(default_factory=list)
    due_s: float = 0.0  # RETRY_LATER: when, epoch seconds
    error: dict[str, Any] | None = None  # RETRY_LATER / DEAD: the last error (kind, status, message)
    items: bytes = b""  # DONE: the parser's items, JSON lines made in the parse pool
    warc: list[WarcExchange] = field(default_factory=list)  # DONE with --warc: the responses, hops included


def settlement(outcomes: Sequence[Outcome], extra_release: Sequence[Lease] = ()) -> Settlement:
    """The one frontier call that settles these outcomes (and hands back `extra_release` unstarted)."""
    return Settlement(
        done=[o.lease for o in outcomes if o.action is Action.DONE],
        links=[ln for o in outcomes if o.action is Action.DONE for ln in o.links],
        deferred=[Deferral(o.lease, o.due_s, o.attempts) for o in outcomes if o.action is Action.RETRY_LATER],
        dead=[
            DeadLetter(o.lease, o.attempts, o.error or {"kind": "unknown"}) for o in outcomes if o.action is Action.DEAD
        ],
        released=[*(o.lease for o in outcomes if o.action is Action.RELEASE), *extra_release],
    )
