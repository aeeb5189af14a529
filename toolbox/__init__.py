"""toolbox: a typed, registry-driven training toolbox for PyTorch.

The Python API (toolbox.api): ``toolbox.config(...)`` makes a config, ``toolbox.train``,
``toolbox.test`` and ``toolbox.load_model`` use it. They load on first use, so that
importing the package (as train.py --help does) costs nothing."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = ("train", "test", "load_model", "TrainResult")

__all__ = ["__version__", "config", *_API]


def __getattr__(name: str) -> Any:
    if name == "config":  # the subpackage, which is callable (toolbox.config(...))
        return importlib.import_module("toolbox.config")
    if name in _API:
        return getattr(importlib.import_module("toolbox.api"), name)
    raise AttributeError(f"module 'toolbox' has no attribute {name!r}")
