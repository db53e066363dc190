"""The bookshop's parser: a router by label, as `--parser examples.bookshop.parser:router`.

    home (the seed, no label)  -> Follow(each category's first listing page, data={"category": name}, "listing")
    listing                    -> Follow(each product, data={"category": ...}, label="product"), Follow(next page)
    product                    -> one item: name, sku, price, currency, in_stock, stock, category

The category is read once, on the home page, and travels with the URLs as user data (`page.data`) down to the
product pages, which do not show it in a form worth parsing. Prices and availability come from the page's
JSON-LD (what the shop means), with the visible HTML as the fallback when the block is broken.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from crawler import Follow, Page

_STOCK = re.compile(r"\((\d+) available\)")


def home(page: Page) -> Iterator[Follow]:
    for a in page.css("nav.categories a"):
        href = a.attributes.get("href")
        if href:
            yield Follow(href, data={"category": a.text(strip=True)}, label="listing")


def listing(page: Page) -> Iterator[Follow]:
    category = page.data.get("category")
    for a in page.css("article.book h3 a"):
        href = a.attributes.get("href")
        if href:
            yield Follow(href, data={"category": category}, label="product")
    next_page = page.css_first("li.next a")
    if next_page is not None and next_page.attributes.get("href"):
        yield Follow(next_page.attributes["href"] or "", data=page.data, label="listing")


def product(page: Page) -> dict[str, Any]:
    offer: dict[str, Any] = {}
    sku = None
    for block in page.json_ld():
        if isinstance(block, dict) and block.get("@type") == "Product":
            offer = block.get("offers") or {}
            sku = block.get("sku")
    article = page.css_first("article.product")
    name = page.css_first("article.product h1")
    availability = page.css_first("p.availability")
    availability_text = availability.text(strip=True) if availability is not None else ""
    price = offer.get("price")
    if price is None:  # broken JSON-LD: the visible price, "£12.99"
        shown = page.css_first("p.price")
        price = shown.text(strip=True).lstrip("£") if shown is not None else None
    stock = _STOCK.search(availability_text)
    return {
        "name": name.text(strip=True) if name is not None else None,
        "sku": sku or (article.attributes.get("data-sku") if article is not None else None),
        "price": price,
        "currency": offer.get("priceCurrency", "GBP"),
        "in_stock": availability_text.startswith("In stock"),
        "stock": int(stock.group(1)) if stock else 0,
        "category": page.data.get("category"),
    }


router = {None: home, "listing": listing, "product": product}
