"""User extraction rules (`--extract rules.json`): read and checked once at start, applied in the parse pool.

They live apart from the settings object because the parse pool imports them, and it should import no more of the
settings than the rules themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from crawler.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ExtractRule:
    """One user extraction rule: `name` <- text (or `attr`) of the elements matching `css`."""

    name: str
    css: str
    attr: str | None = None
    all: bool = False


def check_css(selector: str) -> str | None:
    """The parser's complaint about a CSS selector, or None when lexbor accepts it (checked at start, not at the
    first page in the pool)."""
    from selectolax.lexbor import LexborHTMLParser

    try:
        LexborHTMLParser("<html><body></body></html>").css(selector)
    except Exception as exc:  # selectolax raises a bare ValueError/SelectolaxError on a bad selector
        return str(exc) or type(exc).__name__
    return None


def load_extract_rules(path: str | Path) -> tuple[ExtractRule, ...]:
    """Read `{"field": "css"}` or `{"field": {"css": ..., "attr": ..., "all": bool}}`; ConfigError when bad."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read extraction rules {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"extraction rules {path} are not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"extraction rules {path}: expected a JSON object of field -> CSS selector")
    rules: list[ExtractRule] = []
    for name, spec in raw.items():
        if isinstance(spec, str):
            rules.append(ExtractRule(name, spec))
        elif isinstance(spec, dict) and isinstance(spec.get("css"), str):
            attr = spec.get("attr")
            if attr is not None and not isinstance(attr, str):
                raise ConfigError(f"extraction rules {path}: field {name!r}: 'attr' must be a string")
            rules.append(ExtractRule(name, spec["css"], attr, bool(spec.get("all", False))))
        else:
            raise ConfigError(f"extraction rules {path}: field {name!r} needs a CSS selector string")
    for r in rules:
        problem = check_css(r.css)
        if problem is not None:
            raise ConfigError(f"extraction rules {path}: field {r.name!r}: bad CSS selector {r.css!r}: {problem}")
    return tuple(rules)
