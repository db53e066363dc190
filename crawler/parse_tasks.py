"""What the settings put into every `ParseTask`: caps, scope, extraction and link rules, the user's parser.

One function for the worker's processing stage and for `crawl parse`, so a page parsed by hand is parsed exactly
as the crawl would parse it.
"""

from __future__ import annotations

from typing import Any

from crawler.fetch_base import FetchResult
from crawler.linkrules import LinkRules
from crawler.parse import ParseTask
from crawler.scrape import effective_follow
from crawler.settings import Settings
from crawler.urls import InvalidURL, crawl_url


def task_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `ParseTask` that come from the settings (not from the page or the lease)."""
    scope = settings.scope
    return {
        "max_bytes": settings.fetch.max_body_bytes,
        "max_links": scope.max_links_per_page,
        "keep_tracking": scope.keep_tracking_params,
        "follow": effective_follow(scope.follow, settings.parse.parser),
        "allow_domains": scope.allow_domains,
        "rules": settings.parse.extract_rules,
        "ban_markers": settings.proxy.ban_markers,
        "parser_spec": settings.parse.parser,
        "link_rules": LinkRules(
            tuple(p.pattern for p in scope.include), tuple(p.pattern for p in scope.exclude), scope.follow_selector
        ),
    }


def task_for(result: FetchResult, url: str, options: dict[str, Any], **page: Any) -> ParseTask:
    """A fetched page as a ParseTask: its raw body, where it ended up (links resolve against that), its headers;
    `options` from `task_options`, `page` what only the caller knows (depth, extras, kind)."""
    try:
        final = crawl_url(result.final_url).url
    except InvalidURL:
        final = url
    return ParseTask(
        body=result.body or b"",
        url=url,
        final_url=final,
        content_encoding=result.content_encoding,
        header_charset=result.charset,
        status=result.status,
        headers=result.raw_headers,
        truncated=result.truncated,
        **options,
        **page,
    )
