"""From argv to a call, torch-free at import: train.py's parsing (``parse``) and entry points
(``main``), test.py's arguments (``test_program``), ``--sweep`` (``sweep``) and
``python -m toolbox runs`` (``runs``). torch loads only once a run is about to be built.

The names below load their module on first use, so that ``python -m toolbox runs`` does not
pay for tyro and the configs, which only train.py's parsing needs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolbox.cli.main import print_error, run_cli, script_main, test_main, train_main
    from toolbox.cli.parse import parse_training_config

_MODULE_OF = {
    "parse_training_config": "toolbox.cli.parse",
    "print_error": "toolbox.cli.main",
    "run_cli": "toolbox.cli.main",
    "script_main": "toolbox.cli.main",
    "test_main": "toolbox.cli.main",
    "train_main": "toolbox.cli.main",
}

__all__ = [
    "parse_training_config",
    "print_error",
    "run_cli",
    "script_main",
    "test_main",
    "train_main",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
