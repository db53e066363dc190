"""Where each setting's value comes from: a flag, else a `CRAWL_*` variable, else the config file, else its default.

One reader for every source, driven by the table in `crawler.options`, so the CLI, `Settings.from_env()` and the
config file cannot drift apart. Every value, whatever its source, goes through the same click type as the flag
(so `CRAWL_CONCURRENCY=many` and `concurrency = "many"` are refused like `--concurrency many`) and the same
converter. An error names the flag and, when the value did not come from a flag, where it came from
(`CRAWL_TIMEOUT`, `crawl.toml, key 'timeout'`).

The config file (`--config crawl.toml`, or `CRAWL_CONFIG`) is TOML with one top-level key per flag, named as the
flag without its dashes: `concurrency = 64`, `per-host-delay = 0.5`, `proxy = ["http://..."]` (a list for a
repeatable flag), `follow = false` for `--no-follow`. Relative paths in it are relative to the working directory,
as on the command line. An unknown key is an error (a typo must not be silently ignored by a whole fleet).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from crawler.errors import ConfigError
from crawler.options import BY_KEY, BY_NAME, OPTIONS, Option

_TOML_TYPES: dict[type, tuple[type, ...]] = {int: (int,), float: (int, float), bool: (bool,), str: (str,), Path: (str,)}
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path string"}


@dataclass(frozen=True, slots=True)
class Resolved:
    """Field values some source set (dotted path -> value in the field's unit), and for each flag whose value
    came from the environment or the file, where it came from."""

    values: dict[str, Any]
    sources: dict[str, str]


def with_source(message: str, where: str) -> str:
    return f"{message} (from {where})" if where else message


def param_type(opt: Option) -> click.ParamType[Any]:
    """The click type of a row, shared by the command line and the other sources."""
    if opt.choices:
        return click.Choice(opt.choices)
    if opt.type is Path:
        return click.Path(file_okay=False, path_type=Path)
    types: dict[type, click.ParamType[Any]] = {int: click.INT, float: click.FLOAT, bool: click.BOOL}
    return types.get(opt.type, click.STRING)


def _convert(opt: Option, value: Any, where: str) -> Any:
    try:
        return param_type(opt).convert(value, None, None)
    except click.BadParameter as exc:
        raise ConfigError(with_source(f"{opt.flag.split('/')[0]}: {exc.message}", where)) from None


def _typed(opt: Option, value: Any, where: str) -> Any:
    items = list(value) if opt.multiple and isinstance(value, list | tuple) else [value]
    out = [_convert(opt, v, where) for v in items]
    return tuple(out) if opt.multiple else out[0]


def env_value(opt: Option, env: Mapping[str, str]) -> tuple[str | list[str], str] | None:
    """(the raw value, its variable) from the first of the row's variables that is set and not empty (as click
    reads them); a repeatable option's variable holds several values split by `env_sep`, else whitespace."""
    for var in opt.envvars:
        text = env.get(var)
        if text:
            if not opt.multiple:
                return text.strip(), var
            parts = text.split(opt.env_sep) if opt.env_sep else text.split()
            return [p.strip() for p in parts if p.strip()], var
    return None


def _from_file(opt: Option, value: Any, where: str) -> Any:
    items = value if opt.multiple and isinstance(value, list) else [value]
    expected = _TOML_TYPES[opt.type]
    for v in items:
        if not isinstance(v, expected) or (isinstance(v, bool) and opt.type is not bool):
            kind = f"{_TYPE_NAMES[opt.type]} or a list of them" if opt.multiple else _TYPE_NAMES[opt.type]
            raise ConfigError(f"{where}: expected {kind}, got {type(v).__name__} {v!r}")
    return _typed(opt, items if opt.multiple else value, where)


def read_config(path: str | Path) -> dict[str, Any]:
    """The file's settings by key (flag name); ConfigError naming the file (and key) when it cannot be used."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(f"{path}, key {key!r}: settings are top-level keys, not tables")
        if key not in BY_NAME or BY_NAME[key].field is None:
            dashed = key.replace("_", "-")
            close = [dashed] if dashed in BY_NAME else difflib.get_close_matches(key, list(BY_NAME), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close and close[0] != "config" else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}; keys are the flags' names without dashes")
    return data


def _pick(opt: Option, flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any], name: str) -> Any:
    """(value in the flag's unit, where) from the first source that sets it, or (None, "")."""
    value = flags.get(opt.key)
    if value is not None and value != ():
        return _typed(opt, value, ""), ""
    found = env_value(opt, env)
    if found is not None:
        return _typed(opt, found[0], found[1]), found[1]
    if opt.name in file:
        where = f"{name}, key {opt.name!r}"
        return _from_file(opt, file[opt.name], where), where
    return None, ""


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], options: Sequence[Option] = OPTIONS) -> Resolved:
    """Read `options` from `flags` (Python keywords, in the flags' units: what click parsed, or what a caller
    passes), then `env`, then the config file named by `--config` or `CRAWL_CONFIG`."""
    config = flags.get("config") or env.get(BY_KEY["config"].envvars[0]) or None
    file = read_config(config) if config else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in options:
        if opt.field is None:
            continue
        raw, where = _pick(opt, flags, env, file, str(config))
        if raw is None:
            continue
        try:
            value = opt.to_field(raw)
        except ConfigError as exc:
            raise ConfigError(with_source(str(exc), where)) from None
        values[opt.field] = values[opt.field] + value if opt.merge and opt.field in values else value
        if where:
            sources[opt.flag.split("/")[0]] = where
    return Resolved(values, sources)
