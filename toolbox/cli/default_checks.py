"""tyro's check of each field's default against the field's type, without typeguard.

tyro checks every default it is given (``_resolver.is_instance``); for a tuple or an
``X | None`` type it falls back to typeguard, whose import (unittest.mock, asyncio,
importlib.metadata) took about 60 ms of every train.py --help, more than tyro's own work on
the config. Our configs' defaults are of those types, so ``install`` answers them here:
structurally for tuples and unions, with tyro's own check for their members. A default it
finds to be no instance is handed to tyro's check as before, so a wrong default is judged
(and warned about) exactly as tyro would; only the import is spared when all is well."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

_original: Any = None


def _is_instance(typ: Any, value: Any) -> bool:
    return _matches(typ, value) or _original(typ, value)


def _matches(typ: Any, value: Any) -> bool:
    """True if ``value`` is certainly of type ``typ``; False if not or unsure. Members are
    judged as tyro's own fast paths judge them: plain classes by isinstance (with the numeric
    tower), Literal by membership."""
    origin = typing.get_origin(typ)
    if origin is typing.Annotated:
        return _matches(typing.get_args(typ)[0], value)
    if origin in (Union, types.UnionType):
        return any(_matches(arg, value) for arg in typing.get_args(typ))
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        args = typing.get_args(typ)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(args[0], item) for item in value)
        return len(args) == len(value) and all(
            _matches(arg, item) for arg, item in zip(args, value, strict=True)
        )
    if origin is typing.Literal:
        return value in typing.get_args(typ)
    if type(typ) is type:  # a plain class: tyro's check needs no typeguard
        return _original(typ, value)
    return False  # list[int], Callable, a TypeVar, Any: tyro's (typeguard's) to judge


def install() -> None:
    """Routes tyro's default checks through ``_is_instance`` (once; a tyro without
    ``_resolver.is_instance`` is left alone, only slower)."""
    global _original
    if _original is not None:
        return
    try:
        from tyro import _resolver
    except ImportError:
        return
    original = getattr(_resolver, "is_instance", None)
    if original is None:
        return
    _original = original
    _resolver.is_instance = _is_instance
