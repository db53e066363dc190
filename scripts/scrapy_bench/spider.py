"""The benchmark spider: follow every same-origin link from the start page, yield one item per page.

Idiomatic and lean: CSS selectors (parsel/lxml) for the title and hrefs, `response.urljoin`, one Request per
same-origin link with the authenticating proxy in `meta['proxy']`; deduplication is the scheduler's job
(scrapy-redis RFPDupeFilter: canonicalised URL fingerprints in a Redis set).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy.http import Response


class SiteSpider(scrapy.Spider):
    name = "site"

    def __init__(self, start_url: str, proxy: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.start_url = start_url
        self.proxy = proxy
        p = urlsplit(start_url)
        self.origin = f"{p.scheme}://{p.netloc}/"
        self.allowed_domains = [p.hostname or ""]

    def _meta(self) -> dict[str, Any]:
        return {"proxy": self.proxy} if self.proxy else {}

    async def start(self) -> Any:  # Scrapy >= 2.13
        yield scrapy.Request(self.start_url, meta=self._meta())

    def start_requests(self) -> Iterator[scrapy.Request]:  # older Scrapy
        yield scrapy.Request(self.start_url, meta=self._meta())

    def parse(self, response: Response) -> Iterator[Any]:
        if not isinstance(response, scrapy.http.TextResponse):
            yield {"url": response.url, "status": response.status, "title": None, "links": []}
            return
        title = response.css("title::text").get()
        links: list[str] = []
        seen: set[str] = set()
        meta = self._meta()
        for href in response.css("a::attr(href)").getall():
            url = response.urljoin(href).split("#", 1)[0]
            if not url.startswith(self.origin) or url in seen:
                continue
            seen.add(url)
            links.append(url)
            yield scrapy.Request(url, meta=meta)
        yield {"url": response.url, "status": response.status, "title": title, "links": links}
