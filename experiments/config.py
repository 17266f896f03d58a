"""Typed experiment configs: one pydantic model per experiment kind, YAML and CLI overrides.

A config file names its ``kind`` and overrides fields of that kind's model::

    kind: rollout
    description: Random policy on simple_spread
    seed: 0
    env: mpe/simple_spread-v3
    episodes: 20

Defaults live in the models only. ``key.sub=value`` on the command line overrides a field;
values are parsed as YAML (``steps=100``, ``noise=[0.1,0.5]``, ``name=abc``). Unknown keys and
wrong types are rejected with the key's full path, a suggestion and the expected type.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from experiments.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ExperimentConfig(BaseModel):
    """Fields every experiment has. Each kind subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of every generator in the run (0 .. 2**32-1).")
    description: str = Field("", max_length=1000, description="One line shown by `list` and in the gallery.")
    imports: list[str] = Field([], max_length=100, description="Modules imported before the run (a user's own environments); `run --import M` adds to it.")


class Section(BaseModel):
    """Base of nested config sections: unknown keys rejected like the top level."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# Finding and reading config files


def available_configs() -> dict[str, Path]:
    """Config files shipped in ``experiments/configs``, by name (file stem)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_config_path(config: str | Path) -> Path:
    """A path as given if it exists, else a shipped config of that name."""
    path = Path(config)
    if path.is_file():
        return path
    shipped = available_configs()
    name = path.stem if path.suffix in (".yaml", ".yml") else str(config)
    if name in shipped and (path.parent == Path(".") or not path.parent.exists()):
        return shipped[name]
    close = difflib.get_close_matches(name, list(shipped), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserError(
        f"config file {str(config)!r} not found{hint} (shipped configs: {', '.join(shipped) or 'none'})"
    )


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of overrides; more is a wrong file
MAX_EXPANDED = 100_000  # values in a config once its aliases are expanded


def _expanded_size(value: Any, memo: dict[int, int], path: set[int]) -> int:
    """How many values ``value`` holds with every shared (aliased) part counted each time."""
    if not isinstance(value, (dict, list)):
        return 1
    key = id(value)
    if key in memo:
        return memo[key]
    if key in path:
        raise yaml.YAMLError("it refers to itself through an alias")
    path.add(key)
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    total = 1
    for item in items:
        total += _expanded_size(item, memo, path)
        if total > MAX_EXPANDED:
            break
    path.discard(key)
    memo[key] = total
    return total


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, refusing documents whose aliases expand past MAX_EXPANDED values.

    A few lines of nested aliases (``b: [*a, *a, ...]``, the "billion laughs") expand to
    billions of values once copied, validated or printed; PyYAML itself builds them as shared
    references in no time, so the expanded size is counted (each shared part once) first.
    """
    data = yaml.safe_load(text)
    if _expanded_size(data, {}, set()) > MAX_EXPANDED:
        raise yaml.YAMLError(f"its aliases (*name) expand to more than {MAX_EXPANDED} values; write the values out")
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """Reads a YAML mapping; a clear error for unreadable, binary, huge or non-mapping files."""
    try:
        if Path(path).stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"config file {str(path)!r} is larger than {MAX_CONFIG_BYTES >> 20} MiB; is it a config?")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); is it a config?") from None
    if "\x00" in text:
        raise UserError(f"config file {str(path)!r} holds NUL bytes; is it a config?")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise UserError(f"config file {str(path)!r} is not valid YAML: {_short(exc, 300)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'a.b=3'`` -> (['a', 'b'], 3). The value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r} is not of the form key=value or key.sub=value")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with every ``key.sub=value`` override applied."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: {'.'.join(path[: i + 1])!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


# --------------------------------------------------------------------------------------------
# Validation with errors a person can act on


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a mapping ({annotation.__name__})"
    return getattr(annotation, "__name__", str(annotation))


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at ``loc`` (skipping list indices)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        sub = _submodel(field.annotation)
        if sub is None:
            return None
        model = sub
    return model


def _short(value: Any, limit: int = 80) -> str:
    """``value`` as one line of at most ``limit`` characters (long inputs are cut, not dumped)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):  # a validator's own words: kept as written (K is not k)
            return _short(msg.removeprefix(prefix), 400)
    return _short(msg[:1].lower() + msg[1:], 400)


def _format_error(model: type[BaseModel], err: dict[str, Any], kind: str) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if not loc:  # a check of the whole config (a model validator): its message names the keys
        return f"config of kind {kind!r} is invalid: {_message(err)}"
    parent = _model_at(model, tuple(p for p in loc[:-1]))
    if err["type"] == "extra_forbidden":
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        prefix = ".".join(str(p) for p in loc[:-1])
        hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
        return f"unknown config key {key!r} for kind {kind!r}{hint} (allowed: {', '.join(allowed)})"
    # The field is the last named part of the path (list items and dict keys follow it).
    names = [p for p in loc if isinstance(p, str)]
    holder = _model_at(model, tuple(loc[: max(i for i, p in enumerate(loc) if isinstance(p, str))])) if names else None
    field = holder.model_fields.get(names[-1]) if holder else None
    expected = f" (expected {_type_name(field.annotation)})" if field is not None else ""
    if err["type"] == "missing":
        return f"config key {key!r} is required for kind {kind!r}{expected}"
    if isinstance(err.get("input"), dict) and field is not None and _submodel(field.annotation) is not None:
        # A section's own check: say which section, not its whole contents.
        return f"config section {key!r} is invalid: {_message(err)}"
    return f"config key {key!r} = {_short(repr(err.get('input')))} is invalid: {_message(err)}{expected}"


def validate(model: type[ExperimentConfig], data: dict[str, Any], kind: str) -> ExperimentConfig:
    """Validates ``data`` against ``model``; raises UserError with every problem on one line."""
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        problems = [_format_error(model, e, kind) for e in exc.errors()]
        raise UserError("; ".join(problems)) from None
    except (TypeError, ValueError, RecursionError) as exc:  # a validator that choked on odd input
        raise UserError(f"config of kind {kind!r} is invalid: {_short(exc, 400)}") from None
    # Every number is finite: a NaN learning rate or an infinite rate is a typo, never a setting.
    bad = [(path, v) for path, v in _numbers(cfg.model_dump()) if not math.isfinite(v)]
    if bad:
        raise UserError("; ".join(f"config key {p!r} = {v} is invalid: must be a finite number" for p, v in bad))
    return cfg


def _numbers(value: Any, path: str = "") -> typing.Iterator[tuple[str, float]]:
    if isinstance(value, float):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}.{i}")


def to_plain(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain YAML-able data."""
    return cfg.model_dump(mode="json")
