"""Dataclass configs: YAML files plus ``--set key=value`` overrides, validated with clear errors.

Every config field carries its help text in ``field(metadata={"help": ...})``; ``describe``
turns that into the CLI's ``--help`` listing so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
import re
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any, TypeVar

from flexpaft.errors import FlexpaftError, short_repr

T = TypeVar("T")
log = logging.getLogger("flexpaft")


def opt(default: Any, help: str, path: bool = False, **kw: Any) -> Any:
    """A dataclass field with help text (lists/dicts get a default_factory). ``path=True``
    marks a file or directory: ``~`` and ``$VARS`` in it are expanded and control characters
    refused (``expand_path``)."""
    meta = {"help": help, **({"path": True} if path else {})}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def section(cls: type, help: str) -> Any:
    """A nested config section whose default is ``cls()``."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value against a type hint; raise FlexpaftError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except FlexpaftError as e:
                errors.append(str(e))
        raise FlexpaftError(errors[0] if errors else f"{where}: invalid value {short_repr(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise FlexpaftError(
                f"{where}: {short_repr(value)} is not one of {', '.join(map(repr, args))}"
            )
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise FlexpaftError(f"{where}: expected a mapping, got {short_repr(value)}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            # "a,b,c" on the command line means a list
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise FlexpaftError(f"{where}: expected a list, got {short_repr(value)}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FlexpaftError(f"{where}: expected a mapping, got {short_repr(value)}")
        # Values are checked like any field's: a NaN in lora.alpha_pattern is refused here,
        # not blamed on the learning rate when the loss turns NaN.
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, inner, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise FlexpaftError(f"{where}: expected true/false, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FlexpaftError(f"{where}: expected an integer, got {short_repr(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; users mean a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FlexpaftError(f"{where}: expected a number, got {short_repr(value)}")
        if not math.isfinite(value):
            # NaN passes every "< 0" check and poisons the run; no setting means infinity.
            raise FlexpaftError(f"{where}: expected a finite number, got {short_repr(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if value is None or isinstance(value, (bool, int, float, datetime.date)):
            # YAML turned the user's text into another type (yes -> True, 0755 -> 493, a
            # date, null); str() of it would be a different name, so ask for quotes instead.
            raise FlexpaftError(
                f"{where}: expected text, got {short_repr(value)} (YAML reads yes/no/on/off, "
                "numbers, dates and null as other types): quote the value, e.g. '0755'"
            )
        raise FlexpaftError(f"{where}: expected a string, got {short_repr(value)}")
    return value


def _is_text_type(tp: Any) -> bool:
    """A str field (or a union of str and None): its --set value is taken as typed."""
    if tp is str or tp is Path:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return bool(args) and all(a is str or a is Path for a in args)
    return False


_VAR = re.compile(r"\$(?:(\w+)|\{([^}]*)\})")


def expand_path(text: str, where: str) -> str:
    """``~`` and ``$VAR``/``${VAR}`` expanded as a shell would; what a shell would silently turn
    into something else (an unset or empty variable, an unknown ``~user``) and control
    characters (a newline, tab or NUL in a file name) are refused in one line."""
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc":
            raise FlexpaftError(
                f"{where}: a path cannot contain the control character {ch!r} "
                f"(position {i + 1} of {short_repr(text)})"
            )

    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if not name or not re.fullmatch(r"\w+", name):
            raise FlexpaftError(f"{where}: {m.group(0)!r} is not a variable name")
        value = os.environ.get(name)
        if not value:
            # The shell would make "$RUN_DIR/x" "/x"; a directory literally named "$RUN_DIR"
            # is not what anyone meant either.
            state = "empty" if value == "" else "not set"
            raise FlexpaftError(f"{where}: ${name} is {state} in the environment")
        return value

    out = os.path.expanduser(_VAR.sub(var, text) if "$" in text else text)
    if out.startswith("~"):
        raise FlexpaftError(
            f"{where}: cannot expand {out.split('/')[0]!r} (no such user or no HOME); "
            "write ./~... for a directory named that way"
        )
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys are an error, not ignored."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise FlexpaftError(
            f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})"
        )
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        value = _coerce(value, hints[name], key)
        if meta[name].get("path") and value:
            if isinstance(value, str):
                value = expand_path(value, key)
            elif isinstance(value, dict):
                value = {k: expand_path(v, f"{key}.{k}") for k, v in value.items()}
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise FlexpaftError(f"{where or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per field: ``key (default): help``, nested sections flattened with dots."""
    lines = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(hints[f.name]):
            lines.extend(describe(hints[f.name], key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        lines.append(f"  {key} = {default!r}\n      {f.metadata.get('help', '')}")
    return lines
