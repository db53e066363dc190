"""Link rules: which of a page's links (and of a parser's follow requests) may reach the frontier.

Like Scrapy's `LinkExtractor(allow=, deny=, restrict_css=)` and Crawlee's `enqueue_links(include=, exclude=,
selector=)`, applied in the parse pool before anything reaches Redis:

- `include`: regular expressions searched in the absolute URL; when any is given, a URL must match one;
- `exclude`: a URL matching any of these is never followed (exclude wins over include);
- `follow_selector`: a CSS selector; only `<a href>` elements inside (or equal to) a matching element count as
  the page's links. It picks links out of the page, so it does not apply to a parser's explicit `Follow`s, which
  pass the include and exclude patterns only.

`LinkRules` is plain strings (frozen, picklable, cheap to send with every task); the compiled forms are cached
once per parse process. With no rule given nothing is filtered, and parse.py skips the filter altogether.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from selectolax.lexbor import LexborHTMLParser, LexborNode

from crawler.errors import ConfigError


@dataclass(frozen=True, slots=True)
class LinkRules:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    follow_selector: str | None = None

    def __post_init__(self) -> None:
        for flag, patterns in (("--include", self.include), ("--exclude", self.exclude)):
            for p in patterns:
                try:
                    re.compile(p)
                except re.error as exc:
                    raise ConfigError(f"{flag} {p!r} is not a valid regular expression: {exc}") from None
        if self.follow_selector is not None:
            try:
                LexborHTMLParser("<p></p>").css(self.follow_selector)
            except Exception as exc:  # selectolax raises a bare ValueError/SelectolaxError on a bad selector
                msg = f"--follow-selector {self.follow_selector!r} is not a valid CSS selector: {exc}"
                raise ConfigError(msg) from None

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude or self.follow_selector)

    def allows_url(self, url: str) -> bool:
        """The include/exclude test on an absolute URL (what a parser's `Follow` must pass)."""
        inc, exc = _compiled(self.include), _compiled(self.exclude)
        if exc is not None and exc.search(url):
            return False
        return inc is None or bool(inc.search(url))

    def bind(self, tree: LexborHTMLParser) -> LinkFilter:
        """The filter for one page: the selector is evaluated once here, not once per link."""
        inside: set[int] | None = None
        if self.follow_selector is not None:
            inside = set()
            for el in tree.css(self.follow_selector):
                if el.tag == "a" and el.attributes.get("href") is not None:
                    inside.add(el.mem_id)
                inside.update(a.mem_id for a in el.css("a[href]"))
        return LinkFilter(self, inside)


class LinkFilter:
    """`filter(url, anchor) -> bool` for the links of one page; remembers the URLs it let through (`accepted`),
    which become the parser's `page.links`."""

    __slots__ = ("_inside", "_rules", "accepted")

    def __init__(self, rules: LinkRules, inside: set[int] | None) -> None:
        self._rules = rules
        self._inside = inside  # mem_ids of the anchors inside the follow selector; None: no selector
        self.accepted: list[str] = []

    def __repr__(self) -> str:
        return f"LinkFilter({self._rules}, accepted={len(self.accepted)})"

    def __call__(self, url: str, anchor: LexborNode | None = None) -> bool:
        if self._inside is not None and (anchor is None or anchor.mem_id not in self._inside):
            return False
        if not self._rules.allows_url(url):
            return False
        self.accepted.append(url)
        return True


@functools.lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> _Matcher | None:
    """One alternation per pattern list (a URL is searched once, not once per pattern); patterns that cannot be
    joined (an inline global flag such as `(?i)` must open its expression) are searched one by one."""
    if not patterns:
        return None
    try:
        return re.compile("|".join(f"(?:{p})" for p in patterns))
    except re.error:
        return _AnyOf(tuple(re.compile(p) for p in patterns))


class _AnyOf:
    __slots__ = ("_patterns",)

    def __init__(self, patterns: tuple[re.Pattern[str], ...]) -> None:
        self._patterns = patterns

    def search(self, url: str) -> bool:
        return any(p.search(url) for p in self._patterns)


_Matcher = re.Pattern[str] | _AnyOf
