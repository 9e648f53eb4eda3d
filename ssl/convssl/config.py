"""Typed configuration: frozen dataclasses per component, YAML as their serialisation.

``from_dict`` rejects unknown keys (with a did-you-mean) and wrong types before anything
runs, naming the key path and the expected type; ``apply_overrides`` applies
``--set a.b=value`` (the value parsed as YAML, so ``0.1``, ``true``, ``[0.2, 1.0]`` work).
Numbers are read as people write them: YAML 1.1 reads ``1e-4`` (no dot) as a string,
so number fields also take such strings, and ``--set`` turns them into numbers.
``at_least`` and ``between`` are the range checks the sections' ``__post_init__`` use.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path

import yaml

from convssl.errors import ConfigError

# A decimal number as people write it: 3, -2.5, .5, 1e-4, 1E+3 (YAML 1.1 needs "1.0e-4").
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def from_dict(cls, data, path: str = ""):
    """Build dataclass ``cls`` from a plain dict, checking keys and types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping for {cls.__name__}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(_join(path, k) + did_you_mean(k, fields, path) for k in unknown)}; "
            f"valid keys{' under ' + path if path else ''}: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values = {k: coerce(hints[k], v, _join(path, k)) for k, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if path and re.split(r"[ \[(]", message, maxsplit=1)[0] in fields:  # names a field: give its key path
            raise ConfigError(_join(path, message)) from exc
        raise ConfigError(f"{path or cls.__name__}: {message}") from exc


def to_dict(obj) -> dict:
    """Plain, YAML-safe dict of a (nested) dataclass; tuples become lists; an object with a
    ``to_section()`` method (a task spec) writes its section itself."""
    def plain(v):
        if hasattr(v, "to_section"):
            return v.to_section()
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def did_you_mean(word: str, choices, path: str = "") -> str:
    """`` (did you mean PATH.X?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {_join(path, close[0])}?)" if close else ""


def at_least(name: str, value, low, *, strict: bool = False) -> None:
    """Raise ``ValueError`` unless ``value >= low`` (``> low`` when ``strict``); NaN fails too."""
    ok = value > low if strict else value >= low
    if not ok:
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")


def between(name: str, value, low, high, *, high_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``low <= value <= high`` (``< high`` when ``high_open``)."""
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        raise ValueError(f"{name} must be in [{low}, {high}{')' if high_open else ']'}, got {value}")


def parse_number(value):
    """``value`` as an int or float when it is a string spelling a number, else unchanged."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and not re.search(r"[.eE]", value) else number
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def coerce(tp, value, path: str):
    """``value`` read as type ``tp`` (the field's annotation) at key path ``path``, or a
    one-line ``ConfigError``: numbers from number strings, lists to tuples, dataclasses
    from mappings (``from_dict``), and a type with a ``from_section(value, path)``
    classmethod (a task spec) reads its section itself."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if isinstance(tp, type) and hasattr(tp, "from_section"):
        return tp.from_section(value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: {value!r} matches none of {_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list ({_name(tp)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else typing.Any
        items = [coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp in (float, int):
        value = parse_number(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .inf and .nan are YAML numbers, and no setting means them
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} does not exist; the bundled recipes are in recipes/")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a mapping of sections")
    return data


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr_per_256=0.1")
        try:
            value = parse_number(yaml.safe_load(raw)) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: cannot parse value: {exc}") from exc
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def set_keys(data: dict, values) -> dict:
    """Return a copy of ``data`` with each dotted key of the mapping ``values`` set to its value
    (the Python-API twin of ``apply_overrides``: values are used as given, not parsed)."""
    import copy

    data = copy.deepcopy(data)
    for key, value in values.items():
        parts = str(key).split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return data
