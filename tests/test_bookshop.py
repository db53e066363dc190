"""The bookshop example scraped as a user would: its parser, its user data, its link rules.

In process: the real parser on the real pages (examples.bookshop.site.render), followed exactly as the frontier
would (FollowLink data and label handed to the next page's task). End to end: a real `crawl worker` through the
test proxy, checked against the shop's own table and its access log.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crawler.linkrules import LinkRules
from crawler.parse import ParseTask, parse_page
from crawler.testing.services import RedisServer, RunningServer, start_server
from examples.bookshop import site
from tests.helpers import PROXY_PASSWORD, PROXY_USER, crawl, enqueue, worker_args

ORIGIN = "http://shop.test"
SPEC = "examples.bookshop.parser:router"
RULES = LinkRules(exclude=("/preorder/",))


def _sku(item: dict[str, Any]) -> str:
    return str(item["sku"])


def _mini_crawl(rules: LinkRules) -> tuple[list[dict[str, Any]], list[str]]:
    """Breadth-first over the shop with parse_page alone: what a worker does minus Redis and HTTP."""
    queue: deque[tuple[str, int, str | None, str | None]] = deque([(ORIGIN + "/", 0, None, None)])
    seen = {ORIGIN + "/"}
    items: list[dict[str, Any]] = []
    fetched: list[str] = []
    while queue:
        url, depth, data, label = queue.popleft()
        fetched.append(url)
        status, body = site.render(url.removeprefix(ORIGIN))
        task = ParseTask(
            body=body,
            url=url,
            final_url=url,
            header_charset="utf-8",
            status=status,
            depth=depth,
            data=data,
            label=label,
            follow=False,  # --parser without --follow
            parser_spec=SPEC,
            link_rules=rules,
        )
        page = parse_page(task)
        assert page.error is None, (url, page.parser_error_detail)
        items += [json.loads(line) for line in page.items.splitlines()]
        assert page.items_count == len(page.items.splitlines())
        assert page.follow == []  # --parser without --follow: only the parser's requests
        for f in page.requests:
            if f.url not in seen:
                seen.add(f.url)
                queue.append((f.url, depth + 1, f.data, f.label))
    return items, fetched


def test_the_parser_yields_every_product_with_its_category_in_process() -> None:
    items, fetched = _mini_crawl(RULES)
    expected = site.expected_items(include_preorders=False)
    assert len(items) == len(expected) and len(expected) > 20
    by_sku = {b.slug: b for b in site.CATALOGUE}
    for item in items:
        assert item.pop("_url") == ORIGIN + by_sku[_sku(item)].path
    assert sorted(items, key=_sku) == sorted(expected, key=_sku)
    # out of stock and broken JSON-LD are both in there, and the category came from the listing's user data
    assert any(not i["in_stock"] for i in items) and any(b.broken_json_ld and not b.removed for b in site.CATALOGUE)
    # only the allowed pages: the home page, every listing page, products except pre-orders (removed ones 404)
    allowed = {ORIGIN + p for p in site.iter_paths() if "/preorder/" not in p}
    assert set(fetched) == allowed and len(fetched) == len(allowed)


def test_without_the_exclude_rule_the_preorders_are_scraped_too() -> None:
    items, _ = _mini_crawl(LinkRules())
    for item in items:
        item.pop("_url")
    assert sorted(items, key=_sku) == sorted(site.expected_items(include_preorders=True), key=_sku)


# -- end to end ---------------------------------------------------------------------------------------------


@pytest.fixture
def shop() -> Iterator[RunningServer]:
    with start_server("examples.bookshop.site", "--port", 0) as s:
        yield s


@pytest.fixture
def proxy() -> Iterator[RunningServer]:
    with start_server(
        "crawler.testing.proxy_server", "--port", 0, "--user", PROXY_USER, "--password", PROXY_PASSWORD
    ) as p:
        yield p


@pytest.mark.slow
def test_a_real_worker_scrapes_the_shop_through_the_proxy(
    redis_server: RedisServer, crawl_name: str, tmp_path: Path, shop: RunningServer, proxy: RunningServer
) -> None:
    enqueue(redis_server, crawl_name, tmp_path, [shop.url + "/"])
    out = tmp_path / "out"
    proxy_url = proxy.url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@")
    run = crawl(
        worker_args(
            redis_server.url,
            crawl_name,
            out,
            "--until-idle",
            "--concurrency",
            "8",
            "--proxy",
            proxy_url,
            "--parser",
            SPEC,
            "--exclude",
            "/preorder/",
        )
    )
    assert run.returncode == 0, run.stdout + run.stderr
    items = [json.loads(line) for f in sorted((out / "items").glob("*.jsonl")) for line in f.read_text().splitlines()]
    by_sku = {b.slug: b for b in site.CATALOGUE}
    for item in items:
        assert item.pop("_url") == shop.url + by_sku[_sku(item)].path
    assert sorted(items, key=_sku) == sorted(site.expected_items(include_preorders=False), key=_sku)
    paths = shop.stats()["paths"]
    allowed = {p for p in site.iter_paths() if "/preorder/" not in p} | {"/robots.txt"}
    assert set(paths) == allowed
    assert len(paths) == len(set(paths)), "a page was fetched twice"
