"""Evaluate a trained run: `python test.py outputs/<run>`; `--help` lists the options."""

import sys

from toolbox.cli.main import run_cli, test_main

if __name__ == "__main__":
    sys.exit(run_cli(test_main))
