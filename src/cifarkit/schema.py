"""Turn plain dicts (from YAML) into typed dataclasses, with errors a user can act on.

Unknown keys name the nearest valid key; wrong types name the key, the expected type and the
value. Numbers must be finite: inf and nan (YAML `.inf`, `.nan`) are refused for every float
field, since no learning rate, decay or probability means anything at infinity; a field that
really takes them says so with `Annotated[float, ALLOW_NONFINITE]`. Range checks live in each
dataclass's `validate()` method.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from cifarkit.errors import ConfigError


class _AllowNonFinite:
    """Marker for `Annotated[float, ALLOW_NONFINITE]`: the field admits inf and nan."""

    def __repr__(self) -> str:
        return "ALLOW_NONFINITE"


ALLOW_NONFINITE = _AllowNonFinite()


def nearest(key: str, options, cutoff: float = 0.0) -> str:
    """The option most like `key` ("" when none reaches `cutoff`, difflib's similarity ratio)."""
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=cutoff)
    return match[0] if match else ""


def unknown_key_error(where: str, key: str, options) -> ConfigError:
    hint = nearest(key, options)
    near = f"; did you mean '{where}{hint}'?" if hint else ""
    return ConfigError(f"unknown key '{where}{key}'{near}")


def parse_dataclass(cls, data: Any, where: str = ""):
    """Build dataclass `cls` from a mapping, recursively, checking keys and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{where.rstrip('.') or 'recipe'}' must be a mapping, got {_show(data)}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key_error(where, str(key), fields)
        kwargs[key] = coerce(hints[key], value, f"{where}{key}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def coerce(tp, value: Any, where: str, *, nonfinite: bool = False):
    """Check `value` against type hint `tp`, converting where lossless (int -> float, list -> tuple).

    Floats must be finite unless `nonfinite` (set by an `ALLOW_NONFINITE` annotation)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *marks = get_args(tp)
        return coerce(base, value, where, nonfinite=nonfinite or any(m is ALLOW_NONFINITE for m in marks))
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, where, nonfinite=nonfinite)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:        # `X | None`: X's own message is the more precise one
            raise errors[0]
        raise ConfigError(f"'{where}' must be {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"'{where}' must be one of {', '.join(map(repr, choices))}, got {_show(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list, got {_show(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"'{where}' must have {len(args)} entries, got {len(value)}")
            return tuple(coerce(a, v, f"{where}[{i}]", nonfinite=nonfinite) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [coerce(item, v, f"{where}[{i}]", nonfinite=nonfinite) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, where + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{where}' must be true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"'{where}' must be an integer, got {_show(value)}")
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:      # an integer with hundreds of digits
            number = math.inf
        if not nonfinite and not math.isfinite(number):
            raise ConfigError(f"'{where}' must be a finite number, got {_show(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{where}' must be a string, got {_show(value)}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"'{where}' must be a mapping, got {_show(value)}")
    raise TypeError(f"schema: unsupported type {tp!r} at {where}")


def to_dict(obj) -> dict:
    """Dataclass -> plain dict of YAML-friendly values (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def check(condition: bool, message: str) -> None:
    """Range check helper for `validate()` methods."""
    if not condition:
        raise ConfigError(message)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(tp) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


__all__ = ["ALLOW_NONFINITE", "parse_dataclass", "coerce", "to_dict", "check", "nearest", "unknown_key_error", "typing"]
