"""Typed option dataclasses: defaults, validation and parsing shared by the API, configs and the CLI.

Each method (and later each recipe) declares its options as a dataclass whose fields are built with
:func:`option`. :func:`build` turns a mapping of user values into an instance, rejecting unknown names
(listing the valid ones) and values of the wrong type or out of range, so a misspelled option is an
error, never silently ignored. :func:`parse_value` converts command-line text with the same rules.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    since: str | None = None,
    keyed: bool = True,
    sep: str | None = None,
) -> Any:
    """A dataclass field with a help line and optional constraints.

    ``since`` marks an option added after run keys were first recorded (the prunekit version that
    added it): :func:`key_dict` leaves it out while it has its default value, so every run recorded
    before it existed keeps its key.

    ``keyed=False`` marks a request whose *outcome* identifies a run, not the request itself (e.g.
    ``amp``: the run records the precision it resolves to on its device). :func:`key_dict` writes
    its default, as every key recorded before the outcome was keyed did.

    ``sep`` separates the items of a tuple option on the command line (default ``,``).
    """
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive, "since": since, "keyed": keyed,
            "sep": sep}
    return dataclasses.field(default=default, metadata=meta)


def required(help: str, **constraints: Any) -> Any:
    """A dataclass field without a default (a command line makes it a required flag)."""
    meta = {"help": help, "choices": None, "min": None, "max": None, "min_exclusive": False, "since": None, "keyed": True, **constraints}
    return dataclasses.field(metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed_types(hint: Any) -> tuple[list[Any], bool]:
    """(the non-None types of a hint, whether None is allowed)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = list(typing.get_args(hint))
        nullable = type(None) in args
        return [a for a in args if a is not type(None)], nullable
    return [hint], False


def _tuple_element(t: Any) -> type:
    args = [a for a in typing.get_args(t) if a is not Ellipsis]
    return args[0] if args else int


def _is_number(v: Any, elem: type) -> bool:
    if elem is str:
        return isinstance(v, str) and bool(v)
    if isinstance(v, bool):
        return False
    if elem is int:
        return isinstance(v, int)
    return isinstance(v, (int, float)) and math.isfinite(v)


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def check_value(cls: type, name: str, value: Any, owner: str) -> Any:
    """Validate (and lightly coerce: int -> float, list -> tuple) one option value."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    types_, nullable = _allowed_types(_hints(cls)[name])
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"option {name!r} of {owner} cannot be None")
    ok = False
    for t in types_:
        base = typing.get_origin(t) or t
        if base is bool:
            ok = isinstance(value, bool)
        elif base is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif base is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok:
                value = float(value)
        elif base is str:
            ok = isinstance(value, str)
        elif base is tuple:
            elem = _tuple_element(t)
            ok = isinstance(value, (tuple, list)) and all(_is_number(v, elem) for v in value)
            if ok:
                value = tuple(elem(v) for v in value)
        if ok:
            break
    if not ok:
        wanted = " or ".join(_type_name(t) for t in types_) + (" or None" if nullable else "")
        raise ConfigError(f"option {name!r} of {owner} must be {wanted}, got {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"option {name!r} of {owner} must be one of {', '.join(meta['choices'])}; got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            rel = ">" if meta.get("min_exclusive") else ">="
            raise ConfigError(f"option {name!r} of {owner} must be {rel} {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ConfigError(f"option {name!r} of {owner} must be <= {hi}, got {value!r}")
    return value


def build(cls: type[T], values: Mapping[str, Any], owner: str) -> T:
    """Instantiate the option dataclass ``cls`` from ``values``, validating every entry.

    Raises:
        ConfigError: an unknown option (the message lists the valid ones) or an invalid value.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in values:
        if key not in names:
            valid = ", ".join(names) if names else "none"
            raise ConfigError(f"unknown option {key!r} for {owner}; valid options: {valid}")
    checked = {k: check_value(cls, k, v, owner) for k, v in values.items()}
    return cls(**checked)


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """``(name, type, default, help)`` for every option of ``cls``."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        types_, nullable = _allowed_types(hints[f.name])
        tname = "|".join(_type_name(typing.get_origin(t) or t) for t in types_) + ("|None" if nullable else "")
        out.append((f.name, tname, f.default, f.metadata.get("help", "")))
    return out


_NO_VALUE = object()


def parse_value(cls: type, name: str, text: str, owner: str) -> Any:
    """Convert command-line text to the type of option ``name`` of ``cls`` and validate it."""
    names = [f.name for f in dataclasses.fields(cls)]
    if name not in names:
        raise ConfigError(f"unknown option {name!r} for {owner}; valid options: {', '.join(names) or 'none'}")
    types_, nullable = _allowed_types(_hints(cls)[name])
    if nullable and text.lower() in ("none", "null", ""):
        return check_value(cls, name, None, owner)
    for t in types_:
        base = typing.get_origin(t) or t
        value: Any = _NO_VALUE
        if base is bool:
            low = text.lower()
            value = True if low in ("1", "true", "yes", "on") else False if low in ("0", "false", "no", "off") else _NO_VALUE
        elif base in (int, float):
            try:
                value = base(text)
            except ValueError:
                value = _NO_VALUE
        elif base is tuple:
            elem = _tuple_element(t)
            sep = dataclasses.fields(cls)[names.index(name)].metadata.get("sep") or ","
            if elem is not str:  # numbers: "1,28,28" or "1x28x28"
                text = text.replace("x", sep)
            try:
                value = tuple(elem(v.strip()) for v in text.split(sep) if v.strip())
            except ValueError:
                value = _NO_VALUE
        elif base is str:
            value = text
        if value is not _NO_VALUE:
            # the text has this type: a bad range or choice is the real problem, reported as such
            return check_value(cls, name, value, owner)
    wanted = " or ".join(_type_name(typing.get_origin(t) or t) for t in types_)
    raise ConfigError(f"option {name!r} of {owner} must be {wanted}, got {text!r}")


def as_dict(instance: Any) -> dict[str, Any]:
    """The options as a plain dict (tuples become lists, for JSON)."""
    return {k: as_dict_value(v) for k, v in dataclasses.asdict(instance).items()}


def key_dict(instance: Any, *, requested: bool = False) -> dict[str, Any]:
    """:func:`as_dict` without the options added later (``since=``) that still have their default,
    and with the options that are not keyed (``keyed=False``) at their default.

    This is what a run's key is computed from: adding an option to a method never changes the key
    (nor the meaning) of a run recorded before it existed. ``requested=True`` keeps the options that
    are not keyed at their values (what a run asked for, as its stored configuration says it);
    :func:`unkeyed_at_default` turns that form into the keyed one.
    """
    out = as_dict(instance)
    for f in dataclasses.fields(instance):
        if f.metadata.get("since") and getattr(instance, f.name) == f.default:
            del out[f.name]
    return out if requested else unkeyed_at_default(type(instance), out)


def unkeyed_at_default(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (a :func:`key_dict` of ``cls``) with the options that are not keyed at their default."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        if f.metadata.get("keyed") is False and f.name in out:
            out[f.name] = as_dict_value(f.default)
    return out


def as_dict_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
