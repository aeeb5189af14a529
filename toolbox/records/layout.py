"""The names of the files in a run directory. Torch-free, so that the commands that only read
runs (``python -m toolbox runs``) need no torch."""

from __future__ import annotations

import re

CONFIG = "config.json"


ENV = "env.json"


LOG = "training.log"


METRICS = "metrics.csv"


RECORD = "run.json"


RUNTIME = "runtime.json"
CURVES = "curves.png"
LAST = "checkpoint.pth.tar"
"""The last state of the run, written at every epoch end and stop."""
BEST = "model_best.pth.tar"
"""The state at the best value of --monitor."""
PER_EPOCH = re.compile(r"checkpoint_e(\d+)\.pth\.tar")
LOCK = "run.lock"


def per_epoch_name(epoch: int) -> str:
    return f"checkpoint_e{epoch}.pth.tar"
