"""`crawl parse URL|FILE --parser ...`: run the parser once and show what it yields, without a crawl.

Like `scrapy parse`: the page is fetched with the crawl's own Fetcher through the configured proxy (or read from a
saved HTML file), parsed in a one-process parse pool (the same code, time limit and containment as a crawl), and
the items and follow requests are printed. The developer also gets the parser's full traceback, which a crawl
keeps out of its records.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawler.errors import ConfigError, FetchError
from crawler.parse import FollowLink, ParsedPage, ParseTask
from crawler.parse_tasks import task_for, task_options
from crawler.scrape import load_parser
from crawler.settings import Settings
from crawler.urls import InvalidURL, normalize

SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})


@dataclass(slots=True)
class ParseOutcome:
    target: str
    url: str
    status: int  # 0 for a file
    page: ParsedPage | None = None  # None when the fetch failed
    fetch_error: str | None = None  # "connect: ConnectionRefusedError", ...
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def follows(self) -> list[FollowLink]:
        """The parser's requests, then the page's links followed with --follow."""
        if self.page is None:
            return []
        return [*self.page.requests, *(FollowLink(*f) for f in self.page.follow)]

    @property
    def ok(self) -> bool:
        """False when the page could not be fetched or the parser failed: `crawl parse` exits 1."""
        return self.fetch_error is None and self.page is not None and self.page.error is None


async def parse_once(
    target: str,
    parser_spec: str,
    settings: Settings,
    *,
    base_url: str | None = None,
    data: dict[str, Any] | None = None,
    label: str | None = None,
) -> ParseOutcome:
    """Fetch `target` (an http(s) URL) or read it (a file; `base_url` resolves its links), parse it once.

    ConfigError (exit 2) for a parser that cannot load, a bad URL or an unreadable file; a failed fetch or parser
    is in the outcome."""
    load_parser(parser_spec)  # a one-line error before any fetch
    settings = settings.with_(parse=dataclasses.replace(settings.parse, parser=parser_spec))
    common: dict[str, Any] = {**task_options(settings), "data": data, "label": label, "want_traceback": True}
    if target.startswith(("http://", "https://")):
        try:
            url = normalize(target).url
        except InvalidURL as exc:
            raise ConfigError(f"crawl parse: {target!r} is not a crawlable URL: {exc}") from None
        task_or_error = await _fetch(url, settings, common)
        if isinstance(task_or_error, str):
            return ParseOutcome(target, url, 0, fetch_error=task_or_error)
        task = task_or_error
    else:
        task = _from_file(target, base_url, settings, common)
    page = await _parse(task, settings)
    items = [json.loads(line) for line in page.items.splitlines()]
    return ParseOutcome(target, task.url, task.status, page, None, items)


async def _fetch(url: str, settings: Settings, common: dict[str, Any]) -> ParseTask | str:
    from crawler.fetch import Fetcher, make_session
    from crawler.proxies import ProxyPool

    proxies = ProxyPool(settings.proxy.urls, settings.proxy.session_requests, None)
    async with make_session(settings, None) as session:  # the user named this URL: no SSRF guard
        try:
            result = await Fetcher(session, settings).fetch(url, proxies.choose())
        except FetchError as exc:
            return f"{exc.kind}: {exc}"
    if result.body is None:
        return f"not HTML ({result.content_type or 'no content type'}, status {result.status})"
    return task_for(result, url, common)


def _from_file(target: str, base_url: str | None, settings: Settings, common: dict[str, Any]) -> ParseTask:
    path = Path(target)
    try:
        with path.open("rb") as f:
            body = f.read(settings.fetch.max_body_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"crawl parse: cannot read {target}: {exc.strerror or exc}") from None
    url = path.resolve().as_uri()
    if base_url is not None:
        try:
            url = normalize(base_url).url
        except InvalidURL as exc:
            raise ConfigError(f"crawl parse: --url {base_url!r}: {exc}") from None
    return ParseTask(body=body, url=url, final_url=url, status=0, **common)


async def _parse(task: ParseTask, settings: Settings) -> ParsedPage:
    from workers.parse_pool import ParsePool

    pool = ParsePool(1, len(task.body) + 1, parser_spec=task.parser_spec, timeout_s=settings.parse.timeout_s)
    try:
        await pool.warm_up()
        return await pool.parse(task)
    finally:
        pool.close()


def format_outcome(outcome: ParseOutcome, as_json: bool = False) -> str:
    """What `crawl parse` prints: a summary, the error (with the traceback), the items, the follows."""
    follows = [_follow_dict(f) for f in outcome.follows]
    page = outcome.page
    if as_json:
        return json.dumps(
            {
                "url": outcome.url,
                "status": outcome.status,
                "error": outcome.fetch_error or (page.error if page else None),
                "parser_error_detail": page.parser_error_detail if page else None,
                "title": page.title if page else None,
                "items": outcome.items,
                "follows": follows,
            },
            ensure_ascii=False,
        )
    lines = [f"page     {outcome.url}  status={outcome.status or '-'}"]
    if outcome.fetch_error:
        lines.append(f"error    fetch failed: {outcome.fetch_error}")
        return "\n".join(lines)
    assert page is not None
    lines[0] += f"  bytes={page.size}  charset={page.charset}  title={page.title!r}  links={len(page.links)}"
    if page.error:
        lines.append(f"error    {page.error}" + (f": {page.parser_error_detail}" if page.parser_error_detail else ""))
        if page.parser_traceback:
            lines.append(page.parser_traceback.rstrip())
    if outcome.url.startswith("file:") and not page.links:
        lines.append("note     a saved file has no base URL: pass --url to resolve its links")
    lines.append(f"items    {len(outcome.items)}  ({page.parser_ms:.1f} ms in the parser)")
    lines += ["  " + json.dumps(i, ensure_ascii=False) for i in outcome.items]
    lines.append(f"follows  {len(follows)}")
    for f in follows:
        extra = "".join(f"  {k}={json.dumps(v, ensure_ascii=False)}" for k, v in f.items() if k != "url")
        lines.append(f"  {f['url']}{extra}")
    return "\n".join(lines)


def _follow_dict(f: FollowLink) -> dict[str, Any]:
    out: dict[str, Any] = {"url": f.url}
    if f.label is not None:
        out["label"] = f.label
    if f.priority is not None:
        out["priority"] = f.priority
    if f.data is not None:
        out["data"] = json.loads(f.data)
    if f.headers:
        out["headers"] = {k: ("***" if k.lower() in SECRET_HEADERS else v) for k, v in f.headers}
    return out
