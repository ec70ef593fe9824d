"""Typed configs: YAML file + `--set section.key=value` overrides -> validated dataclasses.

A config schema is a tree of dataclasses. Every value is checked against its annotation, and every
mistake a user can make (missing file, unknown key, wrong type) raises `ConfigError` with one line
that names the source, the key, what was expected and, for a typo, the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from vpt.errors import ConfigError

T = TypeVar("T")

__all__ = ["load_config", "config_to_dict", "dump_config", "parse_override", "typed_value", "validate", "yaml_problem"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=1e-4"` -> (["train", "lr"], "1e-4" parsed as YAML). `load_config` types it by its field."""
    keys, raw = _split_override(text)
    return keys, _yaml_value(raw)


def _split_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    return key.split("."), raw


def _yaml_value(raw: str) -> Any:
    """A command-line value as YAML reads it; text YAML cannot build (a `!!python/...` tag) stays text."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def typed_value(annotation: Any, raw: str, *, source: str, key: str) -> Any:
    """A value typed on a command line (`--option steps=010`), read as the declared `annotation` says.

    YAML 1.1 would read `no` as False, `010` as eight and `1e-3` as a string; a declared type decides
    first (`_from_text`), YAML reads the rest, and the result is checked against `annotation`."""
    return _coerce(annotation, _override_value(annotation, raw), source=source, key=key)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong in a YAML text, in one line with its line number (`could not determine a constructor ...`)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return where + problem.split("\n")[0]


def load_config(
    schema: type[T],
    path: str | os.PathLike | None = None,
    overrides: typing.Sequence[str] = (),
    *,
    defaults: dict | None = None,
) -> T:
    """Build `schema` from `defaults` <- YAML file at `path` <- `overrides`, validating every key."""
    tree: dict = _deep_copy(defaults or {})
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        # Check the file on its own first so that errors name the file, not a later merge.
        validate(schema, _merge(_deep_copy(tree), loaded), source=str(path))
        tree = _merge(tree, loaded)
        source = str(path)
    for text in overrides:
        keys, raw = _split_override(text)
        value = _override_value(_check_path(schema, keys, source=f"--set {text}"), raw)
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: '{key}' is not a section")
        node[keys[-1]] = value
        validate(schema, tree, source=f"--set {text}")
    return validate(schema, tree, source=source)


def validate(schema: type[T], tree: dict, *, source: str, prefix: str = "") -> T:
    """Turn a nested dict into `schema`, raising ConfigError naming `source` on the first mistake."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' should be a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    hints = typing.get_type_hints(schema)
    for key in tree:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{_suggest(key, fields, prefix)}")
    kwargs = {}
    for name in fields:
        if name in tree:
            kwargs[name] = _coerce(hints[name], tree[name], source=source, key=prefix + name)
    try:
        return schema(**kwargs)
    except TypeError as exc:  # a required field without a value
        raise ConfigError(f"{source}: {exc}") from None
    except ValueError as exc:  # a schema's own __post_init__ check
        raise ConfigError(f"{source}: {exc}") from None


def config_to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dicts/lists, ready for YAML or JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# --------------------------------------------------------------------------------------------------


def _coerce(annotation: Any, value: Any, *, source: str, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, source=source, key=key)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{key}' expects {_describe(annotation)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        closest = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean '{closest[0]}'?)" if closest else ""
        raise ConfigError(f"{source}: '{key}' expects one of {list(args)}, got {value!r}{hint}")
    if dataclasses.is_dataclass(annotation):
        return validate(annotation, value, source=source, prefix=key + ".")
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and origin is list:
            value = [value] if not isinstance(value, str) or "," not in value else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' expects {_describe(annotation)}, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        raise TypeError(f"config annotation {annotation!r} of '{key}' is not supported")
    raise ConfigError(f"{source}: '{key}' expects {_describe(annotation)}, got {value!r} ({type(value).__name__})")


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _suggest(key: str, fields: dict, prefix: str) -> str:
    closest = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{closest[0]}'?)" if closest else f" (valid keys: {', '.join(fields)})"


def _check_path(schema: type, keys: list[str], *, source: str) -> Any:
    """Reject `--set a.b.c=` when the path does not exist in the schema, with a suggestion; else the
    annotation of the key it sets (Any below a free-form mapping)."""
    node: Any = schema
    for depth, key in enumerate(keys):
        prefix = ".".join(keys[:depth]) + ("." if depth else "")
        if not dataclasses.is_dataclass(node):
            if typing.get_origin(node) is dict or node is Any:
                return Any
            raise ConfigError(f"{source}: '{prefix.rstrip('.')}' is a value, not a section")
        fields = {f.name: f for f in dataclasses.fields(node) if f.init}
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{_suggest(key, fields, prefix)}")
        node = typing.get_type_hints(node)[key]
        if typing.get_origin(node) in (Union, types.UnionType) and depth < len(keys) - 1:
            node = next((a for a in typing.get_args(node) if dataclasses.is_dataclass(a)), node)
    return node


_NULL = {"null", "Null", "NULL", "~"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_DECIMAL = re.compile(r"[-+]?\d[\d_]*")
_UNTYPED = object()  # the declared type does not decide: YAML reads the text


def _override_value(annotation: Any, raw: str) -> Any:
    value = _from_text(annotation, raw.strip())
    return _yaml_value(raw) if value is _UNTYPED else value


def _from_text(annotation: Any, raw: str) -> Any:
    """`raw` read as `annotation` declares (`no` for a Literal holding "no" is that string, `010` for
    an int is ten, `1e-3` for a float is 0.001), or `_UNTYPED`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if raw in _NULL and type(None) in args:
            return None
        typed = (_from_text(option, raw) for option in args if option is not type(None))
        return next((value for value in typed if value is not _UNTYPED), _UNTYPED)
    if origin is Literal:
        return next((option for option in args if str(option) == raw), _UNTYPED)
    if origin is list and args and raw[:1] != "[":  # "a,b" - each item typed alone
        items = [_from_text(args[0], part.strip()) for part in raw.split(",")]
        return _UNTYPED if _UNTYPED in items else items
    if annotation is bool:
        return True if raw.lower() in _TRUE else False if raw.lower() in _FALSE else _UNTYPED
    if annotation is int:
        return int(raw.replace("_", "")) if _DECIMAL.fullmatch(raw) else _UNTYPED
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            return _UNTYPED
    if annotation is str:
        return _UNTYPED if raw[:1] in ("'", '"') else raw  # quoted (`path_setting`): YAML unquotes it
    return _UNTYPED


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree
