"""Configs from YAML files, ``--set key=value`` overrides and Python keyword arguments: aliases
(TrainingArguments' names), keys of earlier versions (with a warning), a file shared by train and
eval, and the argparse glue every command uses."""

from __future__ import annotations

import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any, TypeVar

from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.settings.schema import (
    _field_types,
    _is_dataclass_type,
    _is_text_type,
    describe,
    from_dict,
)
from flexpaft.yaml_input import YamlRefused, load_yaml

T = TypeVar("T")
log = logging.getLogger("flexpaft")


def _split_override(text: str) -> tuple[list[str], str]:
    if "=" not in text:
        raise FlexpaftError(f"--set expects key=value, got {short_repr(text)}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise FlexpaftError(f"--set expects key=value, got {short_repr(text)}")
    return key.split("."), raw


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], YAML-parsed value; the text itself if it is not YAML)."""
    keys, raw = _split_override(text)
    try:
        value = load_yaml(raw, f"--set {'.'.join(keys)}") if raw.strip() else ""
    except YamlRefused:
        raise
    except FlexpaftError:
        value = raw
    return keys, value


def _text_override(raw: str) -> str:
    """The value of ``--set key=raw`` for a text field: the text as typed (``exp #3``, ``yes``,
    ``0755``, a newline), unless it is one quoted YAML string, which is unquoted."""
    s = raw.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        try:
            value = load_yaml(s, "--set")
        except FlexpaftError:
            return raw
        if isinstance(value, str):
            return value
    return raw


def _target_type(cls: type, keys: list[str]) -> Any:
    """The type hint of the field ``keys`` names in ``cls`` (None if there is none)."""
    tp: Any = cls
    for k in keys:
        if _is_dataclass_type(tp):
            hints = _field_types(tp)
            if k not in hints:
                return None
            tp = hints[k]
        elif typing.get_origin(tp) is dict and len(typing.get_args(tp)) == 2:
            tp = typing.get_args(tp)[1]
        else:
            return None
    return tp


def read_yaml(path: str | Path) -> dict[str, Any]:
    from flexpaft.validate import check_input_file

    path = check_input_file(path, "config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FlexpaftError(f"config {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise FlexpaftError(f"cannot read config {path}: {e.strerror or e}") from None
    data = load_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FlexpaftError(f"config {path} must be a mapping of keys to values")
    return data


def aliases(cls: type) -> dict[str, str]:
    """Other names accepted for keys of ``cls`` (TrainingArguments' ``learning_rate`` for
    ``optim.lr``), declared as ``__aliases__`` on the config class; the keys of earlier
    versions (``__deprecated__``) are accepted the same way, with a warning."""
    return {**getattr(cls, "__aliases__", {}), **getattr(cls, "__deprecated__", {})}


_warned: set[tuple[str, str]] = set()


def _alias_keys(cls: type, keys: list[str], value: Any) -> list[str]:
    """The real key path for a top-level alias; a section name given a plain value (``optim:
    adamw_torch``, as TrainingArguments spells the optimizer) is the alias too."""
    table = aliases(cls)
    if len(keys) == 1 and keys[0] in table:
        names = {f.name for f in dataclasses.fields(cls)}
        if keys[0] not in names or not isinstance(value, dict):
            new = table[keys[0]]
            if (
                keys[0] in getattr(cls, "__deprecated__", {})
                and (cls.__name__, keys[0]) not in _warned
            ):
                _warned.add((cls.__name__, keys[0]))
                log.warning(
                    "warning: config key %s is deprecated, use %s (the same setting)", keys[0], new
                )
            return new.split(".")
    return keys


def _known_keys(cls: type) -> dict[str, Any]:
    """Every key path of ``cls`` (sections nested), for telling a sibling's keys from typos."""
    out: dict[str, Any] = {}
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out[f.name] = _known_keys(tp) if _is_dataclass_type(tp) else None
    for alias in aliases(cls):
        out.setdefault(alias, None)
    return out


def _drop_sibling_keys(cls: type, data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``data`` without the keys that ``cls`` does not know but a sibling config does (one YAML
    file can serve train, search and eval: eval reads model, data and prompts and leaves the
    training settings to train). Keys no flexpaft command knows stay, and fail as unknown."""
    siblings = [_known_keys(s) for s in getattr(cls, "__siblings__", ())]
    if not siblings:
        return data

    def strip(node: dict[str, Any], mine: dict[str, Any] | None, theirs: list[Any]) -> dict:
        out = {}
        for key, value in node.items():
            own = None if mine is None else mine.get(key, _MISSING)
            other = [s.get(key, _MISSING) for s in theirs if isinstance(s, dict)]
            other = [o for o in other if o is not _MISSING]
            if own is _MISSING and other:
                log.debug("%s: %s is a setting of another command, not read here", path, key)
                continue
            if isinstance(own, dict) and isinstance(value, dict):
                value = strip(value, own, other)
            out[key] = value
        return out

    return strip(data, _known_keys(cls), siblings)


_MISSING = object()


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


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
        )
    return out


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"optim__lr": 2e-4, "method": "paft"}`` -> ``{"optim": {"lr": 2e-4}, "method": "paft"}``
    (keyword arguments cannot hold dots; a double underscore stands for one)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split("__")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = (
            _deep_merge(node[last], value)
            if isinstance(node.get(last), dict) and isinstance(value, dict)
            else value
        )
    return out


class Loadable:
    """``from_yaml`` and ``from_dict`` for a config dataclass: the Python side of ``--config``
    and ``--set``, with the same checks and the same one-line errors."""

    @classmethod
    def from_yaml(cls: type[T], path: str | Path | None = None, *sets: str, **values: Any) -> T:
        """The config in YAML file ``path`` (None: the defaults), then ``values`` as keyword
        arguments (nested with a double underscore: ``optim__lr=2e-4``, or a section as a dict:
        ``optim={"lr": 2e-4}``), then ``sets`` as ``--set`` strings (``"optim.lr=2e-4"``).

        >>> cfg = TrainConfig.from_yaml("configs/boolq_paft.yaml", method="paft", optim__epochs=1)
        """
        return load_config(cls, path, list(sets), _nested(values))

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """The config from a nested mapping of the YAML's shape, checked as a file would be."""
        return load_config(cls, None, None, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """Defaults <- YAML file <- ``values`` (a nested mapping, from Python) <- ``--set``
    overrides, then validated as a whole. Aliases (``learning_rate`` for ``optim.lr``) are
    accepted in all three; a file's keys that only a sibling command knows are left to it."""
    data: dict[str, Any] = read_yaml(path) if path else {}
    if path:
        data = _drop_sibling_keys(cls, data, path)
    data = _apply_aliases(cls, data, str(path))
    if values:
        data = _deep_merge(data, _apply_aliases(cls, values, "values"))
    for text in overrides or []:
        keys, value = parse_override(text)
        keys = _alias_keys(cls, keys, value)
        if _is_text_type(_target_type(cls, keys)):
            # Paths, names and templates are strings: never YAML-coerced (-o yes is "yes/").
            value = _text_override(_split_override(text)[1])
        node = data
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise FlexpaftError(f"--set {text}: {k} is not a section")
            node = nxt
        node[keys[-1]] = value
    from flexpaft.validate import check_ranges

    cfg = from_dict(cls, data)
    check_ranges(cfg)
    return cfg


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
