"""What the processing stage hands the committer: one `Outcome` per lease (with its record), one `Settlement`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crawler.fetch_base import FetchResult
from crawler.frontier import DeadLetter, Deferral, Lease, NewLink, Settlement
from crawler.parse import ParsedPage
from crawler.records import Record
from crawler.retry import Action
from crawler.schedule import Validators
from crawler.warc import WarcItem


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
    # with --warc (DONE, RETRY_LATER, DEAD): every attempt's responses, hops included, earlier attempts first
    # (encoded by the parse process, or exchanges for the writer to encode)
    warc: list[WarcItem] = field(default_factory=list)
    validators: Validators | None = None  # DONE, recurring: ETag, Last-Modified and digest for the next pass


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
        validators={o.lease.member: o.validators for o in outcomes if o.validators is not None},
    )


def describe(exc: BaseException) -> str:
    """The error and its first cause in one line (`connect: Connection refused`): the real reason, for people."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


def build_record(
    lease: Lease,
    attempts: int,
    worker_id: str,
    result: FetchResult | None,
    page: ParsedPage | None,
    error: str | None,
    proxy: str | None,
) -> Record:
    """The one place a lease, its last fetch and its parsed page become an output record."""
    nbytes = (page.size if page is not None else result.bytes) if result is not None else None
    return Record(
        url=lease.url,
        final_url=result.final_url if result else None,
        status=result.status if result else None,
        depth=lease.depth,
        fetched_at=round(time.time(), 3),
        elapsed_ms=result.elapsed_ms if result else None,
        bytes=nbytes,
        content_type=(result.content_type or None) if result else None,
        title=page.title if page else None,
        links=page.links if page else [],
        error=error,
        attempts=attempts,
        proxy=proxy,  # already redacted
        worker=worker_id,
        links_total=page.links_total if page else 0,
        truncated_links=bool(page and page.links_total > len(page.links)),
        canonical=page.canonical if page else None,
        noindex=page.noindex if page else False,
        nofollow=page.nofollow if page else False,
        text_length=page.text_length if page else None,
        charset=page.charset if page else None,
        redirects=result.redirects if result else 0,
        http_version=result.http_version if result else None,
        data=page.data if page else None,
        items=page.items_count if page else 0,
        parser_error_detail=page.parser_error_detail if page else None,
    )
