"""``python -m toolbox runs ...``: see toolbox/runs.py."""

import sys

from toolbox.cli.main import run_cli
from toolbox.cli.runs import main

sys.exit(run_cli(main))
