"""The user's parser: the `Page` it is given, the `Follow` it yields, how it is loaded, and how its output is taken.

`--parser module:function`, `--parser path/to/file.py:function`, or `--parser module:router` where `router` is a
mapping of labels to functions (`None` the default), as Crawlee's router. The function runs in a parse pool
process, never on the event loop, with one `Page`; it returns or yields items (JSON-serialisable dicts) and
`Follow` requests. Everything here runs in the pool process and imports no asyncio.

Why items are serialised here: a parse process turns them into JSONL bytes once, so the worker's committer only
writes bytes, and an item that is not JSON is the page's recorded error (found where it was made), never a crash
of the sink.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectolax.lexbor import LexborHTMLParser, LexborNode

from crawler.entries import MAX_DATA_BYTES
from crawler.errors import ConfigError

MAX_ITEM_BYTES = 4 * 1024 * 1024  # a page's items, as JSONL: a parser cannot grow the worker without bound

ParserFn = Callable[["Page"], Any]


@dataclass(frozen=True, slots=True)
class Follow:
    """A request to crawl `url` next (relative URLs resolve against the page, like its links).

    `data`: a JSON-serialisable dict (at most 8 KiB as JSON) that travels with the URL through the frontier and is
    the next page's `page.data`; `priority`: higher is sooner (when the frontier supports it); `label`: which
    function of the router parses that page; `headers`: extra request headers for that URL.
    """

    url: str
    data: dict[str, Any] | None = None
    priority: int | None = None
    label: str | None = None
    headers: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise TypeError(f"Follow url must be a str, not {type(self.url).__name__}")
        if self.data is not None and not isinstance(self.data, dict):
            raise TypeError(f"Follow data must be a dict, not {type(self.data).__name__}")
        if self.priority is not None and (not isinstance(self.priority, int) or isinstance(self.priority, bool)):
            raise TypeError(f"Follow priority must be an int, not {type(self.priority).__name__}")
        if self.label is not None and not isinstance(self.label, str):
            raise TypeError(f"Follow label must be a str, not {type(self.label).__name__}")
        if self.headers is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in dict(self.headers).items()
        ):
            raise TypeError("Follow headers must map str to str")


class Headers(Mapping[str, str]):
    """Response headers, case-insensitive (`page.headers["content-type"]`); repeated headers joined by ", "."""

    __slots__ = ("_d",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        d: dict[str, str] = {}
        for k, v in pairs:
            key = k.lower()
            d[key] = f"{d[key]}, {v}" if key in d else v
        self._d = d

    def __getitem__(self, key: str) -> str:
        return self._d[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Headers({self._d!r})"


@dataclass(slots=True, repr=False)
class Page:
    """The page your parser is given: the API reference of `--parser`.

    Attributes:
        url: the URL as it was leased (what the frontier stored, fragment dropped).
        final_url: the URL after redirects; relative links resolve against it (or the page's `<base href>`).
        status: the HTTP status (the parser is called for 2xx pages only; 0 for a saved file in `crawl parse`).
        headers: the response headers, a case-insensitive mapping (`page.headers.get("content-type")`).
        depth: link distance from the seed URLs (seeds are 0).
        data: the URL's user data, a dict (`{}` when none): what a `Follow(..., data=...)` or an enqueue line gave.
        label: the URL's label (`Follow(..., label=...)`), which picked this function from the router; None for
            seeds and unlabelled links.
        text: the body decoded to `str` (BOM, then the header charset, then `<meta charset>`, per the WHATWG
            Encoding Standard: `iso-8859-1` decodes as windows-1252; never raises, bad bytes become U+FFFD).
        charset: the codec `text` was decoded with.
        tree: the selectolax `LexborHTMLParser` of the page, built once and shared with the built-in extraction
            (title, links, rules already ran: changing the tree changes nothing in the record).
        links: the page's absolute, normalised links after the link rules (`--include`, `--exclude`,
            `--follow-selector`), before the scope check, at most `--max-links`. With `--parser`, only what the
            parser yields is followed (unless `--follow`): `yield from (Follow(u) for u in page.links)` follows them
            all, and the scope (own host, `--allow-domain`) and the include/exclude patterns still apply.

    Methods: `css(selector)` -> list of nodes, `css_first(selector)` -> node or None, `json_ld()` -> the parsed
    `<script type="application/ld+json">` blocks (invalid ones skipped). Nodes are selectolax `LexborNode`s:
    `node.text(strip=True)`, `node.attributes.get("href")`, `node.css(...)`.

    Return or yield: items (dicts of JSON values; each is written to `<output>/items/<worker>.jsonl` with `_url`
    added) and `Follow(url, data=None, priority=None, label=None, headers=None)` requests, in any mix.
    An exception, a non-JSON item or any other object yielded is the page's recorded `parser_error` (the page is
    still recorded; its items and follows are dropped); a parser running past `--parse-timeout` is killed and the
    page recorded as `parse_timeout`.
    """

    url: str
    final_url: str
    status: int
    headers: Headers
    depth: int
    data: dict[str, Any]
    label: str | None
    text: str
    charset: str
    tree: LexborHTMLParser
    links: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Page({self.url!r}, status={self.status}, label={self.label!r}, depth={self.depth})"

    def css(self, selector: str) -> list[LexborNode]:
        return self.tree.css(selector)

    def css_first(self, selector: str) -> LexborNode | None:
        return self.tree.css_first(selector)

    def json_ld(self) -> list[Any]:
        out: list[Any] = []
        for node in self.tree.css('script[type="application/ld+json"]'):
            try:
                out.append(json.loads(node.text()))
            except ValueError:
                continue
        return out


# -- loading ------------------------------------------------------------------------------------------------


def load_parser(spec: str) -> ParserFn:
    """`module:function`, `path/to/file.py:function` or `module:router` -> the callable a page is given to.

    Raises ConfigError with a one-line message when the module cannot be imported (any exception while importing
    it, with its type and first line), the name is missing, or the function does not take one argument. Called by
    the worker at start (exit status 2) and by each parse process.
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name or not name.isidentifier():
        raise ConfigError(f"--parser {spec!r}: expected module:function or path/to/file.py:function")
    module = _import(spec, where)
    try:
        target = getattr(module, name)
    except AttributeError:
        raise ConfigError(f"--parser {spec!r}: {where} has no attribute {name!r}") from None
    if isinstance(target, Mapping):
        return Router(spec, target)
    _check_callable(spec, name, target)
    fn: ParserFn = target
    return fn


def _import(spec: str, where: str) -> Any:
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = Path(where).resolve()
            if not path.is_file():
                raise ConfigError(f"--parser {spec!r}: no such file {where}")
            mod_name = "crawl_user_parser_" + "".join(c if c.isalnum() else "_" for c in str(path))
            if mod_name in sys.modules:
                return sys.modules[mod_name]
            if str(path.parent) not in sys.path:
                sys.path.append(str(path.parent))  # so the file may import its neighbours
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ConfigError(f"--parser {spec!r}: cannot load {where} as Python")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[mod_name]
                raise
            return module
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)  # importable from the working directory, as `python -m` would allow
        return importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"--parser {spec!r}: cannot import {where}: {describe(exc)}") from None


def _check_callable(spec: str, name: str, fn: Any) -> None:
    if not callable(fn):
        raise ConfigError(f"--parser {spec!r}: {name} is a {type(fn).__name__}, not a function")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: trust it
    try:
        sig.bind(object())
    except TypeError:
        raise ConfigError(f"--parser {spec!r}: {name}{sig} must take one argument, the page") from None


class Router:
    """A mapping of label -> function as one parser: the page's `label` picks the function (None: the default)."""

    __slots__ = ("_routes", "spec")

    def __init__(self, spec: str, routes: Mapping[Any, Any]) -> None:
        self.spec = spec
        for label, fn in routes.items():
            if label is not None and not isinstance(label, str):
                raise ConfigError(f"--parser {spec!r}: router labels are str or None, got {label!r}")
            _check_callable(spec, f"router[{label!r}]", fn)
        self._routes: dict[str | None, ParserFn] = dict(routes)

    def __repr__(self) -> str:
        return f"Router({self.spec!r}, labels={list(self._routes)!r})"

    def __call__(self, page: Page) -> Any:
        fn = self._routes.get(page.label)
        if fn is None:
            raise LookupError(f"the router has no function for label {page.label!r}")
        return fn(page)


_LOADED: dict[str, ParserFn] = {}  # per parse process: the parser is imported once, at the first page or at start


def get_parser(spec: str) -> ParserFn:
    fn = _LOADED.get(spec)
    if fn is None:
        fn = _LOADED[spec] = load_parser(spec)
    return fn


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, capped: what a record says about a user-code failure."""
    lines = str(exc).strip().splitlines()
    msg = lines[0] if lines else ""
    return f"{type(exc).__name__}: {msg}"[:300] if msg else type(exc).__name__


# -- output -------------------------------------------------------------------------------------------------


class ParserOutputError(Exception):
    """The parser returned something we cannot take (not a dict nor a Follow, not JSON, too much)."""


@dataclass(slots=True)
class Output:
    """What a parser produced for one page: items as JSONL bytes (with `_url`), and its follow requests."""

    items: bytes = b""
    count: int = 0
    follows: list[Follow] = field(default_factory=list)


def run_parser(fn: ParserFn, page: Page, max_follows: int) -> Output:
    """Call the parser and take its output; raises what the parser raised, or ParserOutputError.

    Follows past `max_follows` are dropped (the same bound as links per page)."""
    result = fn(page)
    out = Output()
    if result is None:
        return out
    if isinstance(result, dict | Follow):
        result = (result,)
    elif isinstance(result, str | bytes) or not isinstance(result, Iterable):
        raise ParserOutputError(f"the parser returned a {type(result).__name__}; return or yield dicts and Follows")
    chunks: list[bytes] = []
    size = 0
    suffix = ',"_url":' + json.dumps(page.url, ensure_ascii=False) + "}\n"
    for n, obj in enumerate(result):
        if isinstance(obj, Follow):
            if len(out.follows) < max_follows:
                out.follows.append(obj)
            continue
        if not isinstance(obj, dict):
            raise ParserOutputError(f"output {n} is a {type(obj).__name__}, neither a dict (an item) nor a Follow")
        chunk = _item_line(obj, page.url, suffix, n)
        size += len(chunk)
        if size > MAX_ITEM_BYTES:
            raise ParserOutputError(f"the items of one page exceed {MAX_ITEM_BYTES // (1024 * 1024)} MiB")
        chunks.append(chunk)
    out.items = b"".join(chunks)
    out.count = len(chunks)
    return out


def _item_line(item: dict[str, Any], url: str, suffix: str, n: int) -> bytes:
    try:
        if "_url" in item:
            line = json.dumps({**item, "_url": url}, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            return (line + "\n").encode("utf-8", "replace")
        body = json.dumps(item, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ParserOutputError(f"item {n} is not JSON-serialisable: {describe(exc)}") from None
    if body == "{}":
        return (body[:-1] + suffix[1:]).encode("utf-8", "replace")
    return (body[:-1] + suffix).encode("utf-8", "replace")


def encode_data(data: dict[str, Any] | None) -> str | None:
    """A Follow's user data as the JSON the frontier stores; ParserOutputError when it is not JSON or too big."""
    if not data:
        return None
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ParserOutputError(f"Follow data is not JSON-serialisable: {describe(exc)}") from None
    if len(text.encode("utf-8", "replace")) > MAX_DATA_BYTES:
        raise ParserOutputError(f"Follow data is over {MAX_DATA_BYTES // 1024} KiB as JSON")
    return text


def effective_follow(follow: bool | None, parser_spec: str | None) -> bool:
    """`--follow` is tri-state: unset means follow the page's links without a parser, and only what the parser
    yields with one (as in Scrapy and Crawlee); `--follow` / `--no-follow` decide either way."""
    return follow if follow is not None else parser_spec is None
