"""Run a trained model on new inputs: `python predict.py outputs/<run> images/`; `--help`."""

import sys

from toolbox.cli.main import run_cli
from toolbox.cli.predict import predict_main

if __name__ == "__main__":
    sys.exit(run_cli(predict_main))
