"""Train a model. `python train.py --help` lists every option; see README.md."""

import sys

from toolbox.cli.main import run_cli, train_main

if __name__ == "__main__":
    sys.exit(run_cli(train_main))
