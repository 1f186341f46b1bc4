"""Config machinery: dataclasses loaded from YAML, overridden from the command line, dumped next to every run.

The dataclasses themselves live in `mmgen/config/schema.py`, `tokenizers.py` and `data.py` (one per component);
reading and writing YAML in `yaml_io.py`.

    cfg = load_config(RunConfig, "configs/train/shapes_tiny.yaml", ["train.steps=100", "model.depth=2"])
    dump_config(cfg, run_dir / "config.yaml")

Unknown keys and values of the wrong type raise `ConfigError` naming the key and the file, with the valid
keys (and the closest match) so the fix is obvious. Numbers must be finite and lie in the range their class
lists in `RANGES`; ranges and the rules between fields (`__post_init__`) are checked once, after every
override is applied, so the order of the overrides does not matter.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from mmgen.config.yaml_io import read_yaml, to_dict
from mmgen.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    origin = get_origin(tp)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless."""

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}{extra}")

    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass
        raise fail()
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise fail()
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail()
        return _from_dict(tp, value, source, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise fail(f" (expected {len(args)} items)")
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key, source): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    return _coerce_scalar(value, tp, key, source, fail)


def _coerce_scalar(value: Any, tp: Any, key: str, source: str, fail: typing.Callable[[], ConfigError]) -> Any:
    """`value` as the scalar type `tp` (bool, int, float, str or another class); `fail()` makes the error."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise fail()
        if not math.isfinite(number):
            raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail()


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, globalns=vars(__import__(cls.__module__, fromlist=["_"])))


def _from_dict(cls: type[T], data: dict, source: str, prefix: str = "") -> T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = {k: v for k, v in data.items() if k not in getattr(cls, "RETIRED", ())}  # keys of old files, dropped
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), fields, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{source}: unknown key '{prefix}{k}'{hint}; valid keys under '{prefix.rstrip('.') or '<top>'}': "
            + ", ".join(sorted(fields))
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name, source)
    _check_ranges(cls, kwargs, source, prefix)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing required key '{prefix}{missing[0]}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from e


def _check_ranges(cls: type, values: dict[str, Any], source: str, prefix: str) -> None:
    """Each number (or each number in a list) of `values` against its range in `cls.RANGES`."""
    for name, allowed in getattr(cls, "RANGES", {}).items():
        if name not in values:
            continue
        value = values[name]
        for x in value if isinstance(value, (list, tuple)) else [value]:
            if x not in allowed:
                each = " for each item" if isinstance(value, (list, tuple)) else ""
                raise ConfigError(f"{source}: '{prefix}{name}' = {value!r} is out of range (allowed{each}: {allowed})")


def from_dict(cls: type[T], data: dict | None, source: str = "<dict>") -> T:
    """Build `cls` from a plain mapping, checking every key and type."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    return _from_dict(cls, data, source)


def _set_dotted(data: dict, dotted: str, value: Any, cls: type, source: str) -> None:
    """Set `a.b.c = value` in a nested dict, checking each step against the dataclass tree."""
    parts = dotted.split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(node_cls)} if dataclasses.is_dataclass(node_cls) else None
        prefix = ".".join(parts[:i])
        if names is not None and part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{'.'.join(parts[:i] + [close[0]])}'?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key '{dotted}'{hint}; valid keys under '{prefix or '<top>'}': "
                + ", ".join(sorted(names))
            )
        if i == len(parts) - 1:
            leaf = _hints(node_cls)[part] if names is not None else Any
            if not dataclasses.is_dataclass(leaf):  # the type now, so the error names this override
                _coerce(value, leaf, dotted, source)
            node[part] = value
            return
        sub_cls = _hints(node_cls)[part] if names is not None else Any
        sub_cls = next((a for a in get_args(sub_cls) if dataclasses.is_dataclass(a)), sub_cls)
        child = node.get(part)
        if child is None:
            child = {}
        elif dataclasses.is_dataclass(child):
            child = to_dict(child)
        elif not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{'.'.join(parts[: i + 1])}' is not a mapping")
        node[part] = child
        node, node_cls = child, sub_cls


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def merge_overrides(data: dict, overrides: typing.Iterable[str], cls: type, base: str = "") -> dict:
    """Apply `key.sub=value` overrides to `data`, checking each key and value type (`base`: the config they
    change, named in errors)."""
    on = f" on {base}" if base else ""
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value, cls, source=f"command-line override '{text}'{on}")
    return data


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _defaults(cls: type) -> dict:
    """The default instance as a dict (so a partial nested mapping keeps the parent's nested defaults), or
    {} for a class with required fields."""
    try:
        return to_dict(cls())
    except TypeError:
        return {}


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Load `cls` from a YAML file (or defaults when `path` is None), then apply `key.sub=value` overrides.
    Values not given keep the defaults of the enclosing config (nested mappings are merged, not replaced)."""
    data = _merge(_defaults(cls), read_yaml(path) if path is not None else {})
    source = str(path) if path is not None else f"<defaults of {cls.__name__}>"
    overrides = list(overrides)
    for text in overrides:  # keys and types one at a time, so an error names the override that caused it
        merge_overrides(data, [text], cls, base=source)
    if overrides:
        source += " with override" + ("s " if len(overrides) > 1 else " ") + ", ".join(f"'{t}'" for t in overrides)
    return from_dict(cls, data, source)  # ranges and rules between fields: once, after every override
