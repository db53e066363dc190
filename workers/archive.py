"""What the worker keeps of a fetch for the WARC sink: one `WarcExchange` per response, redirect hops included.

Every attempt is kept, not only the last: a retried 503's exchanges travel with the attempt that follows it
(`Processor._attempts`), a deferred or dead URL's with its outcome, and the committer writes them all.

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

from crawler.errors import FetchError
from crawler.fetch_base import FetchResult, Hop
from crawler.warc import WarcExchange


def of_attempt(
    response: FetchResult | None, error: FetchError | None, started: datetime, keep_all: bool, via_proxy: bool
) -> list[WarcExchange]:
    """What the archive keeps of one attempt: the responses of what it got (`crawler.fetch_base.answered`: a body
    cut at the cap included), or, when the fetch failed after redirects answered, those redirects.

    `WARC-IP-Address` is the site's address, so it is left out through a proxy: the address connected to is the
    gateway's, and the site's is known only to the gateway."""
    if response is not None:
        return exchanges(response, started, keep_all, None if via_proxy else response.peer_ip)
    return [_hop(h, started) for h in error.hops] if error is not None else []


def _hop(hop: Hop, started: datetime) -> WarcExchange:
    return _exchange(hop, hop.url, started, hop.bytes > len(hop.body))


def exchanges(result: FetchResult, started: datetime, keep_all: bool, peer_ip: str | None) -> list[WarcExchange]:
    """The exchanges of one fetch, in order; [] when its final response is not kept. A 304 (the answer to a
    recurring URL's conditional request) is always kept: it becomes a `revisit` record, the archive's proof that
    the page was seen again unchanged."""
    not_modified = result.status == 304
    if not not_modified and (result.body is None or not (keep_all or result.is_html)):
        return []
    out = [_hop(hop, started) for hop in result.hops]
    out.append(_exchange(result, result.final_url, started, result.truncated, peer_ip))
    return out


def _exchange(
    r: Hop | FetchResult, url: str, started: datetime, truncated: bool, peer_ip: str | None = None
) -> WarcExchange:
    """One response as the WARC sink keeps it: a redirect hop or the final response (their fields are the same)."""
    return WarcExchange(
        url=url,
        started_at=r.sent_at or started,
        request_method="GET",
        request_headers=r.request_headers,
        http_version=r.http_version,
        status=r.status,
        reason=r.reason,
        response_headers=r.raw_headers,
        body=r.body or b"",
        truncated=truncated,
        peer_ip=peer_ip,
    )


def now() -> datetime:
    return datetime.now(UTC)
