"""A config's JSON form: to plain values and back, checked key by key."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from toolbox.config.training import SLOTS, TrainingConfig, callback_options_class
from toolbox.errors import UserError
from toolbox.plugins import load_plugins


def to_plain(value: Any) -> Any:
    """A config as plain JSON values: dataclasses become dicts, tuples lists, paths strings."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flat(plain: dict, prefix: str = "") -> dict[str, Any]:
    """A config's plain form with nested groups as dotted keys: {"optim.lr": 0.001, ...}."""
    flattened: dict[str, Any] = {}
    for key, value in plain.items():
        if isinstance(value, dict):
            flattened.update(flat(value, f"{prefix}{key}."))
        else:
            flattened[f"{prefix}{key}"] = value
    return flattened


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` read from JSON, converted to the field type ``hint`` (or an error)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _convert(typing.get_args(hint)[0], value, where)
    if dataclasses.is_dataclass(hint):  # a group of options, e.g. TrainingConfig.logger
        return _from_plain(hint, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(options[0], value, where)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, where) for item in value)
        if len(args) == len(value):
            return tuple(_convert(arg, item, where) for arg, item in zip(args, value, strict=True))
    elif origin is Literal and value in typing.get_args(hint):
        return value
    elif hint is Path and isinstance(value, str):
        return Path(value)
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint in (int, str, bool) and type(value) is hint:
        return value
    raise UserError(f"{where} is {value!r}, which is not a valid {_type_name(hint)}.")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _from_plain(cls: type, data: Any, where: str, /, **given: Any) -> Any:
    """An instance of ``cls`` from ``data``'s keys, converted, and ``given``'s values."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a JSON object, not {data!r}.")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UserError(
            f"{where} has unknown keys {unknown}; "
            f"{cls.__name__} takes: {', '.join(sorted(fields))}."
        )
    converted = {key: _convert(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    return cls(**converted, **given)


def from_plain(data: Any, source: str = "config") -> TrainingConfig:
    """The TrainingConfig that ``to_plain`` gave ``data``, checked key by key."""
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a JSON object, not {type(data).__name__}.")
    data = _with_early_stopping_as_a_callback(dict(data))
    plugins = data.get("plugins", ())
    if not (isinstance(plugins, list | tuple) and all(isinstance(p, str) for p in plugins)):
        raise UserError(f"{source}: plugins is {plugins!r}; it must be a list of module names.")
    load_plugins(plugins, f"{source}: plugins")  # they may register the components it names
    slots = {}
    for slot, (selector, registry) in SLOTS.items():
        name = data.get(selector, getattr(TrainingConfig, selector))
        if not isinstance(name, str):
            raise UserError(f"{source}: {selector} is {name!r}; it must be a name (a string).")
        if name not in registry:
            raise UserError(f"{source}: {registry.unknown_message(name)}")
        slots[slot] = _from_plain(registry.get(name), data.pop(slot, {}), f"{source}: {slot}")
    # With the plugins' callbacks' groups, which TrainingConfig's field type does not name.
    options_class = callback_options_class()
    groups = _known_callback_groups(data, options_class)
    options = _from_plain(options_class, groups, f"{source}: callback")
    # The components go in with their selectors: TrainingConfig checks that they agree.
    return _from_plain(TrainingConfig, data, source, callback=options, **slots)


def _with_early_stopping_as_a_callback(data: dict) -> dict:
    """A config saved before early stopping was a callback (--early-stop-patience,
    --early-stop-lr) as the early_stopping callback it became, so that its run resumes."""
    patience, min_lr = data.pop("early_stop_patience", 0), data.pop("early_stop_lr", 0.0)
    if patience or min_lr:
        data["callbacks"] = [*data.get("callbacks", []), "early_stopping"]
        options = {"patience": patience, "min_lr": min_lr}
        data["callback"] = {**data.get("callback", {}), "early_stopping": options}
    return data


def _known_callback_groups(data: dict, options_class: type) -> Any:
    """The saved callback options, less the groups of callbacks that are neither known here
    nor selected: a config saved where more callbacks were registered (by code that is not
    a recorded plugin) holds their defaults, which this run does not use."""
    groups = data.pop("callback", {})
    if not isinstance(groups, dict):
        return groups  # _from_plain says what is wrong with it
    known = {f.name for f in dataclasses.fields(options_class)}
    selected = data.get("callbacks", [])
    selected = set(selected) if isinstance(selected, list) else set()
    return {name: value for name, value in groups.items() if name in known | selected}
