"""What the worker keeps of a fetch for the WARC sink: one `WarcExchange` per response, redirect hops included.

Built on the event loop from what the fetcher already holds (no serialisation here): a parsed page's exchanges
travel with its parse task and the parse process builds and gzips their records (`crawler.warc.encode`); the
others (non-HTML with `all`, bodies cut at the cap, a page whose parse timed out) are encoded by the writer in
the committer's thread.
With `--warc-content html` only HTML responses (and their redirect hops) are kept; with `all`, every body the
fetcher kept under the cap. A body past the cap is kept up to it, marked truncated (the fetcher hands it on
inside BodyTooLarge).
"""

from __future__ import annotations

from datetime import UTC, datetime

from crawler.fetch_base import FetchResult
from crawler.warc import WarcExchange


def exchanges(result: FetchResult, started: datetime, keep_all: bool) -> list[WarcExchange]:
    """The exchanges of one fetch, in order; [] when its final response is not kept. A 304 (the answer to a
    recurring URL's conditional request) is always kept: it becomes a `revisit` record, the archive's proof that
    the page was seen again unchanged."""
    not_modified = result.status == 304
    if not not_modified and (result.body is None or not (keep_all or result.is_html)):
        return []
    out = [
        WarcExchange(
            url=hop.url,
            started_at=started,
            request_method="GET",
            request_headers=hop.request_headers,
            http_version=hop.http_version,
            status=hop.status,
            reason=hop.reason,
            response_headers=hop.raw_headers,
            body=hop.body or b"",
            truncated=hop.body is None and hop.bytes > 0,
        )
        for hop in result.hops
    ]
    out.append(
        WarcExchange(
            url=result.final_url,
            started_at=started,
            request_method="GET",
            request_headers=result.request_headers,
            http_version=result.http_version,
            status=result.status,
            reason=result.reason,
            response_headers=result.raw_headers,
            body=result.body or b"",
            truncated=result.truncated,
            peer_ip=result.peer_ip,
        )
    )
    return out


def now() -> datetime:
    return datetime.now(UTC)
