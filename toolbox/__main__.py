"""``python -m toolbox runs ...``: see toolbox/runs.py."""

import sys

from toolbox.cli import run_cli
from toolbox.runs import main

sys.exit(run_cli(main))
