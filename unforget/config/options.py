"""Typed option values from strings and TOML: one validator for run specs and method configs.

``--set key=value`` flags arrive as strings, TOML files as typed values, checkpoint metadata as
JSON. :func:`build` turns any of them into a frozen dataclass, using the dataclass's own type
hints to coerce, and collects every problem before raising once (STYLE §8).

Kept instead of pydantic (issue 15): every config is a frozen, keyword-only dataclass (STYLE §1)
whose checks live in ``__post_init__``; one ~150-line coercer serves all of them (run spec and
every method's options), reports unknown keys with the valid ones, and its help text comes from
field metadata. pydantic would mean a second model class per config or BaseModel configs with
their own error wording, plus ~10 MB of runtime dependency, for no check we lack.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from unforget.errors import InputError, collect

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_assignments(items: Iterable[str], *, what: str = "--set") -> dict[str, str]:
    """Parse ``key=value`` strings into a dict; every malformed item reported at once."""
    out: dict[str, str] = {}
    problems = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{item!r} is not key=value")
            continue
        out[key.strip()] = value.strip()
    collect(problems, error=InputError, what=what)
    return out


def coerce(value: Any, annotation: Any) -> Any:
    """Convert ``value`` to ``annotation`` (int, float, str, bool, tuples, dicts, optionals).

    Raises:
        ValueError: with a short reason when the value does not fit.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in {"none", "null"})
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(" or ".join(errors))
    if origin is typing.Literal:
        text = value if not isinstance(value, str) else value.strip()
        if text not in args:
            raise ValueError(f"expected one of {', '.join(map(str, args))}")
        return text
    if origin is tuple:
        items = _as_list(value)
        inner = args[0] if args else str
        return tuple(coerce(item, inner) for item in items)
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        return _as_dict(value)
    if annotation is bool:
        return _as_bool(value)
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError("expected an integer") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError("expected a string")
        return str(value)
    return value


def build(cls: type[T], values: Mapping[str, Any], *, what: str) -> T:
    """Build dataclass ``cls`` from ``values``, reporting unknown keys and bad values together.

    ``__post_init__`` checks of ``cls`` may raise ``ValueError``; their message is reported too.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    problems = []
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            problems.append(f"unknown option {key!r} (valid: {', '.join(sorted(fields))})")
            continue
        try:
            kwargs[key] = coerce(value, hints[key])
        except ValueError as exc:
            problems.append(f"{key}={value!r}: {exc}")
    collect(problems, error=InputError, what=what)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: {exc}") from exc


def describe(cls: type) -> list[dict[str, str]]:
    """List a config dataclass's options: name, type and default, for ``unforget methods``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        rows.append(
            {
                "name": f.name,
                "type": _type_name(hints[f.name]),
                "default": json.dumps(default),
                "help": str(f.metadata.get("help", "")),
            }
        )
    return rows


def as_plain(obj: Any) -> Any:
    """A dataclass (or nested structure) as JSON-ready plain values; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    return obj


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return list(json.loads(text))
            except json.JSONDecodeError:
                raise ValueError("expected a JSON list or comma-separated values") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    raise ValueError("expected a list")


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            raise ValueError("expected a JSON object") from None
        if isinstance(parsed, dict):
            return parsed
    raise ValueError("expected a JSON object")


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true or false")
