"""robots.txt per RFC 9309: parsing and matching are pure functions; `RobotsCache` fetches once per origin.

- Groups (2.2.1): a group's `user-agent` value is read up to the first character outside `[A-Za-z_-]` and compared
  case-insensitively with our product token; every matching group is merged; without one, the `*` groups apply.
- Rules (2.2.2): rule and path are compared in one canonical percent-encoding (`canonical_path`); the rule with the
  most octets wins, Allow on a tie; `*` matches any run, a final `$` anchors the end; `/robots.txt` is always allowed.
- Size (2.5): the first 500 KiB are parsed; a line cut by that limit is dropped rather than read as a shorter rule.
- Status (2.3.1): 2xx parse; 3xx left after the fetcher's redirects and 4xx mean "unavailable" (allow all); 5xx, 429
  and no answer mean "unreachable" (allow nothing for now, ask again soon). A 407 from the proxy gateway is neither: it
  is raised to the caller as `ProxyAuthError`, a configuration error.

Matching never backtracks: a rule is split on `*` into literal segments found left to right with `str.find`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from crawler.errors import (
    ConfigError,
    FetchError,
)

MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309 2.5: at least 500 KiB must be parsed; we parse exactly that much
MAX_SITEMAPS = 1000  # `Sitemap:` lines kept per file

_TOKEN = re.compile(r"[A-Za-z_-]*")
_VALID_TOKEN = re.compile(r"[A-Za-z_-]+")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What canonical_path rewrites: any %-sequence (valid or not) and any character that is neither unreserved nor reserved
_NOT_CANONICAL = re.compile(r"%(?:[0-9A-Fa-f]{2})?|[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]")
_EOL = re.compile(r"\r\n|\r|\n")
_BLANKS = re.compile(r"[ \t]+")
_STARS = re.compile(r"\*{2,}")
_DELAY = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_BOM = b"\xef\xbb\xbf"
_WS = " \t\v\f"


def validate_agent_token(token: str) -> str:
    """`token` if it is a product token RFC 9309 2.2.1 allows (`[A-Za-z_-]+`), else ConfigError (one line)."""
    if _VALID_TOKEN.fullmatch(token) is None:
        raise ConfigError(
            f"robots agent must be a product token of letters, '_' and '-' (RFC 9309 2.2.1), got {token[:60]!r}"
        )
    return token


def product_token(user_agent: str) -> str:
    """The product token of a User-Agent header: its leading run of `[A-Za-z_-]` (`crawl/0.1 (+...)` -> `crawl`).

    Used for the default of `--robots-agent` from the *default* User-Agent only: a browser-style `--user-agent`
    (`Mozilla/5.0 ...`) must not make the crawler obey the groups written for browsers. ConfigError when empty."""
    match = _TOKEN.match(user_agent.strip(_WS))
    return validate_agent_token(match.group() if match else "")


def _canon_one(m: re.Match[str]) -> str:
    text = m.group()
    if text[0] == "%":
        if len(text) == 1:
            return "%25"  # a lone '%' is data
        char = chr(int(text[1:], 16))
        return char if char in _UNRESERVED else text.upper()
    return "".join(f"%{b:02X}" for b in text.encode("utf-8", "surrogatepass"))


def canonical_path(path: str) -> str:
    """One spelling for rule and path (RFC 9309 2.2.2): %-escapes of unreserved characters decoded, other escapes
    upper-cased, reserved characters kept as written (`%2F` is not `/`, `%2A` is not `*`), everything else (non-ASCII
    as UTF-8, spaces, controls) percent-encoded. The result is ASCII, so its length is its length in octets."""
    return _NOT_CANONICAL.sub(_canon_one, path) if _NOT_CANONICAL.search(path) else path


@dataclass(frozen=True, slots=True)
class Rule:
    """One Allow/Disallow line in canonical form. `segments` are the literal runs between `*`s (runs of `*` collapsed,
    a final `$` removed and recorded in `anchored`); `priority` is the rule's length in octets (2.2.2). `literal`: the
    longest segment after the first, which any matching path contains (a cheap test before `matches`)."""

    allow: bool
    pattern: str
    priority: int
    segments: tuple[str, ...]
    anchored: bool
    literal: str = ""

    def matches(self, path: str) -> bool:
        """Whether the rule matches canonical `path`. Greedy leftmost segment search: no backtracking is needed because
        a `*` absorbs whatever lies between two segments, so the earliest end of each segment leaves the most room for
        the rest. Cost O(len(pattern) * len(path)) at worst (str.find), usually O(len(path))."""
        segs = self.segments
        first = segs[0]
        if not path.startswith(first):
            return False
        if len(segs) == 1:
            return len(path) == len(first) if self.anchored else True
        pos = len(first)
        for seg in segs[1:-1]:
            found = path.find(seg, pos)
            if found < 0:
                return False
            pos = found + len(seg)
        last = segs[-1]
        if self.anchored:
            return len(path) - len(last) >= pos and path.endswith(last)
        return path.find(last, pos) >= 0


def make_rule(allow: bool, value: str) -> Rule | None:
    """The rule for a line's value; None for an empty value (an empty Disallow allows everything, 2.2.2)."""
    written = canonical_path(value)
    if not written:
        return None
    pattern = _STARS.sub("*", written)
    anchored = pattern.endswith("$")
    segments = (pattern[:-1] if anchored else pattern).split("*")
    if anchored and len(segments) > 1 and segments[-1] == "":
        anchored = False  # "/a*$": any end matches
    literal = max(segments[1:], key=len, default="")
    return Rule(allow, pattern, len(written), tuple(segments), anchored, literal)


class RobotsState(enum.Enum):
    PARSED = "parsed"  # 2xx: the file's rules apply
    UNAVAILABLE = "unavailable"  # 3xx after the redirects, 4xx: no restrictions (RFC 9309 2.3.1.3)
    UNREACHABLE = "unreachable"  # 5xx, 429, no answer: nothing may be fetched now (2.3.1.4)


@dataclass(frozen=True, slots=True)
class RobotsRules:
    """What robots.txt says for one origin and our agent.

    `rules`: the matched groups' rules, most specific first. `crawl_delay_s`: the largest valid `Crawl-delay` of the
    matched groups. `sitemaps`: every `Sitemap:` value in file order, whatever the group (at most MAX_SITEMAPS).
    `status`: the HTTP status robots.txt was answered with (None: no answer, or parsed without a fetch). `cause`: the
    fetch error behind an UNREACHABLE (or a redirect-loop UNAVAILABLE) verdict, its traceback dropped.
    """

    rules: tuple[Rule, ...] = ()
    crawl_delay_s: float | None = None
    sitemaps: tuple[str, ...] = ()
    state: RobotsState = RobotsState.PARSED
    status: int | None = None
    cause: FetchError | None = None
    # first literal segment -> its rules, most specific first; and the distinct segment lengths: a check looks only at
    # rules whose first segment is a prefix of the path, so a typical check costs a few dict lookups
    _index: dict[str, tuple[Rule, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _lengths: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)
    _wild_octets: int = field(default=0, init=False, repr=False, compare=False)  # of the rules with a `*`

    def __post_init__(self) -> None:
        index: dict[str, list[Rule]] = {}
        for rule in sorted(self.rules, key=lambda r: (-r.priority, not r.allow)):
            index.setdefault(rule.segments[0], []).append(rule)
        object.__setattr__(self, "_index", {k: tuple(v) for k, v in index.items()})
        object.__setattr__(self, "_lengths", tuple(sorted({len(k) for k in index})))
        object.__setattr__(self, "_wild_octets", sum(len(r.pattern) for r in self.rules if len(r.segments) > 1))

    def check_cost(self, path: str) -> int:
        """An upper bound, in character comparisons, of `allowed(path)`: wildcard rules cost up to
        len(rule) * len(path) each (str.find), the prefix index one slice per distinct first-segment length.
        About 4 million units per millisecond at worst on one core; RobotsCache runs a check above
        CHECK_THREAD_COST in a thread."""
        return (self._wild_octets + len(self._lengths)) * (len(path) + 1)

    @property
    def unreachable(self) -> bool:
        return self.state is RobotsState.UNREACHABLE

    def allowed(self, path: str) -> bool:
        """Whether `path` (path and query of the fetch URL, from '/') may be fetched. False while UNREACHABLE.

        Worst case per check: every kept rule is tried, each O(len(rule) * len(path)); the 500 KiB cap bounds the sum
        of rule lengths, so the bound is about 500K * len(path) comparisons (`check_cost`; a hostile 500 KiB file of
        wildcard rules costs ~0.25 s on a 2 KB path, which is why RobotsCache moves such checks to a thread). A
        typical check tries only the rules whose first literal segment prefixes the path."""
        if self.state is RobotsState.UNREACHABLE:
            return False
        if not self._index:
            return True
        path = canonical_path(path or "/")
        if path == "/robots.txt":
            return True
        best: Rule | None = None
        for length in self._lengths:
            if length > len(path):
                break
            for rule in self._index.get(path[:length], ()):
                # the bucket is sorted: its first match is its most specific one
                if rule.literal in path and rule.matches(path):
                    if best is None or (rule.priority, rule.allow) > (best.priority, best.allow):
                        best = rule
                    break
        return best is None or best.allow


_NONE, _GLOBAL, _SPECIFIC = 0, 1, 2


def _decode(body: bytes | str, truncated: bool | None) -> str:
    """Text to parse: the first MAX_ROBOTS_BYTES, BOM (or the start of one, as Google does) stripped, the last line
    dropped when the body was cut (it may be a shorter rule than the one written)."""
    if isinstance(body, str):
        if truncated is None:
            truncated = len(body) * 4 >= MAX_ROBOTS_BYTES and len(body.encode("utf-8", "replace")) >= MAX_ROBOTS_BYTES
        text = body.removeprefix("\ufeff")
    else:
        truncated = len(body) > MAX_ROBOTS_BYTES or (len(body) == MAX_ROBOTS_BYTES if truncated is None else truncated)
        data = body[:MAX_ROBOTS_BYTES]
        for n in (3, 2, 1):
            if data[:n] == _BOM[:n]:
                data = data[n:]
                break
        text = data.decode("utf-8", "replace")
    if truncated:
        text = text[: max(text.rfind("\n"), text.rfind("\r")) + 1]
    return text


def _key_value(raw: str) -> tuple[str, str] | None:
    """(lower-case key, value) of one line, comments removed; None for a blank or unparsable line. Like Google, a
    missing colon is accepted when the line is exactly two words (`Disallow /x`)."""
    line = raw.partition("#")[0].strip(_WS)
    if not line:
        return None
    key, sep, value = line.partition(":")
    if not sep:
        words = _BLANKS.split(line)
        if len(words) != 2:
            return None
        key, value = words
    key = key.strip(_WS).lower()
    return (key, value.strip(_WS)) if key else None


def _agent_kind(value: str, token: str) -> int:
    if value[:1] == "*" and (len(value) == 1 or value[1] in _WS):
        return _GLOBAL
    match = _TOKEN.match(value)
    return _SPECIFIC if match is not None and match.group().lower() == token else _NONE


def _delay(value: str) -> float | None:
    return float(value) if _DELAY.fullmatch(value) else None


class _Groups:
    """The matched groups' rules and crawl delays, built line by line: only what applies to our token is kept.

    A group's kind (ours, `*`, other) is known once its user-agent lines are read, which is before its first rule;
    a Crawl-delay may sit between those lines, so the group's delay is committed when the group ends."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.rules: dict[int, list[Rule]] = {_GLOBAL: [], _SPECIFIC: []}
        self.delays: dict[int, list[float]] = {_GLOBAL: [], _SPECIFIC: []}
        self.seen = {_GLOBAL: False, _SPECIFIC: False}
        self.kind, self.in_rules, self.any_agent = _NONE, False, False
        self.pending_delays: list[float] = []

    def agent(self, value: str) -> None:
        if self.in_rules:  # a user-agent line after rules starts the next group
            self.close()
        self.kind, self.any_agent = max(self.kind, _agent_kind(value, self.token)), True
        if self.kind:
            self.seen[self.kind] = True

    def rule(self, allow: bool, value: str) -> None:
        if not self.any_agent:
            return  # rules before any user-agent line belong to no group
        self.in_rules = True
        rule = make_rule(allow, value) if self.kind else None
        if rule is not None:
            self.rules[self.kind].append(rule)

    def delay(self, value: str) -> None:
        delay = _delay(value)
        if delay is not None and self.any_agent:
            self.pending_delays.append(delay)

    def close(self) -> None:
        if self.kind:
            self.delays[self.kind].extend(self.pending_delays)
        self.kind, self.in_rules, self.pending_delays = _NONE, False, []

    def result(self, sitemaps: tuple[str, ...]) -> RobotsRules:
        self.close()
        chosen = _SPECIFIC if self.seen[_SPECIFIC] else _GLOBAL
        return RobotsRules(
            rules=tuple(sorted(self.rules[chosen], key=lambda r: (-r.priority, not r.allow))),
            crawl_delay_s=max(self.delays[chosen], default=None),
            sitemaps=sitemaps,
        )


def parse_robots(body: bytes | str, agent: str, *, truncated: bool | None = None) -> RobotsRules:
    """The rules of robots.txt `body` for product token `agent` (see validate_agent_token; ConfigError if invalid).

    Bytes are decoded as UTF-8 with replacement. `truncated`: whether the fetcher cut the body at the size cap (then
    the partial last line is dropped); None decides by size (a body of MAX_ROBOTS_BYTES or more was cut). Memory and
    time are linear in the body, which the cap bounds; only the matched groups' rules are kept. Crawl-delay: the
    largest valid value (decimal seconds) of the matched groups; like unknown lines, it does not end a group."""
    groups = _Groups(validate_agent_token(agent).lower())
    sitemaps: dict[str, None] = {}  # an ordered set
    for raw in _EOL.split(_decode(body, truncated)):
        kv = _key_value(raw)
        if kv is None:
            continue
        key, value = kv
        if key == "user-agent":
            groups.agent(value)
        elif key in ("allow", "disallow"):
            groups.rule(key == "allow", value)
        elif key == "crawl-delay":
            groups.delay(value)
        elif key == "sitemap" and value and len(sitemaps) < MAX_SITEMAPS:
            sitemaps[value] = None
    return groups.result(tuple(sitemaps))
