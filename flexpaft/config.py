"""Dataclass configs: YAML files plus ``--set key=value`` overrides, validated with clear errors.

Every config field carries its help text in ``field(metadata={"help": ...})``; ``describe``
turns that into the CLI's ``--help`` listing so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import FlexpaftError

T = TypeVar("T")


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (lists/dicts get a default_factory)."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(
            default_factory=lambda: type(value)(value), metadata={"help": help}, **kw
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


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
        raise FlexpaftError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise FlexpaftError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise FlexpaftError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            # "a,b,c" on the command line means a list
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise FlexpaftError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FlexpaftError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise FlexpaftError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FlexpaftError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; users mean a number.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FlexpaftError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            # NaN passes every "< 0" check and poisons the run; no setting means infinity.
            raise FlexpaftError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise FlexpaftError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


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
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise FlexpaftError(f"{where or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise FlexpaftError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise FlexpaftError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    from .validate import check_input_file

    path = check_input_file(path, "config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FlexpaftError(f"config {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise FlexpaftError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise FlexpaftError(f"malformed YAML in {path}{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FlexpaftError(f"config {path} must be a mapping of keys to values")
    return data


def aliases(cls: type) -> dict[str, str]:
    """Other names accepted for keys of ``cls`` (TrainingArguments' ``learning_rate`` for
    ``optim.lr``), declared as ``__aliases__`` on the config class."""
    return dict(getattr(cls, "__aliases__", {}))


def _alias_keys(cls: type, keys: list[str], value: Any) -> list[str]:
    """The real key path for a top-level alias; a section name given a plain value (``optim:
    adamw_torch``, as TrainingArguments spells the optimizer) is the alias too."""
    table = aliases(cls)
    if len(keys) == 1 and keys[0] in table:
        names = {f.name for f in dataclasses.fields(cls)}
        if keys[0] not in names or not isinstance(value, dict):
            return table[keys[0]].split(".")
    return keys


def _apply_aliases(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    moved = []
    for key, value in data.items():
        path = _alias_keys(cls, [key], value)
        if path == [key]:
            out[key] = value if key not in out else _merge(out[key], value)
        else:
            moved.append((key, path, value))
    for key, path, value in moved:
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise FlexpaftError(f"{where}: {k} is not a section")
        if path[-1] in node:
            raise FlexpaftError(
                f"{where}: both {key} and its alias target {'.'.join(path)} are set; keep one"
            )
        node[path[-1]] = value
    return out


def _merge(a: Any, b: Any) -> Any:
    return {**a, **b} if isinstance(a, dict) and isinstance(b, dict) else b


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None
) -> T:
    """Defaults <- YAML file <- ``--set`` overrides, then validated as a whole. Aliases
    (``learning_rate`` for ``optim.lr``) are accepted in both."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    data = _apply_aliases(cls, data, str(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        keys = _alias_keys(cls, keys, value)
        node = data
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise FlexpaftError(f"--set {text}: {k} is not a section")
            node = nxt
        node[keys[-1]] = value
    from .validate import check_ranges

    cfg = from_dict(cls, data)
    check_ranges(cfg)
    return cfg


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


def add_config_arguments(parser: Any, cls: type, example: str = "optim.lr=2e-4") -> None:
    """``--config`` and ``--set`` for a command configured by dataclass ``cls``; ``--help``
    ends with every key, its default and its help text."""
    import argparse

    parser.add_argument("--config", "-c", help="YAML config file")
    parser.add_argument(
        "--set",
        "-s",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )
    parser.epilog = "config keys (YAML or --set):\n" + "\n".join(describe(cls))
    table = aliases(cls)
    if table:
        parser.epilog += (
            "\n\naliases (Hugging Face TrainingArguments / PEFT names, YAML or --set):\n"
            + "\n".join(f"  {a} -> {k}" for a, k in table.items())
        )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def config_from_args(cls: type[T], args: Any, shortcuts: tuple[str, ...] = ()) -> T:
    """The command's config: ``--config`` file, then the shortcut flags named in ``shortcuts``
    (``--output-dir`` is ``--set output_dir=...``), then ``--set`` overrides, which win."""
    overrides = [f"{k}={getattr(args, k)}" for k in shortcuts if getattr(args, k, None)]
    return load_config(cls, args.config, overrides + list(args.set))
