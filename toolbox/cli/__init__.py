"""From argv to a call, torch-free at import: train.py's parsing (``parse``) and entry points
(``main``), test.py's arguments (``test_program``), ``--sweep`` (``sweep``) and
``python -m toolbox runs`` (``runs``). torch loads only once a run is about to be built."""

from toolbox.cli.main import print_error, run_cli, script_main, test_main, train_main
from toolbox.cli.parse import parse_training_config

__all__ = [
    "parse_training_config",
    "print_error",
    "run_cli",
    "script_main",
    "test_main",
    "train_main",
]
