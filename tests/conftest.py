"""Shared helpers: run train.py / test.py in-process, as a user would call them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data"

# A few fast synthetic epochs: small enough to run in about a second on 2 CPU cores.
TINY = [
    "--dataset",
    "synthetic",
    "--data.num-train",
    "320",
    "--data.num-test",
    "64",
    "--batch-size",
    "32",
    "--epochs",
    "2",
    "--log-every",
    "5",
    "--device",
    "cpu",
]


def run_main(main, argv: list[str]) -> int:
    from toolbox.cli.main import run_cli

    return run_cli(main, argv)


@pytest.fixture
def train(tmp_path):
    """Calls train.py's main with ``argv`` (outputs under tmp_path) and returns its exit code."""
    from toolbox.cli.main import train_main

    def call(*argv: str, output_dir: Path | None = None) -> int:
        args = list(argv)
        if "--resume" not in args and "--output-dir" not in args:
            args += ["--output-dir", str(output_dir or tmp_path / "outputs")]
        return run_main(train_main, args)

    return call


@pytest.fixture
def evaluate():
    """Calls test.py's main with ``argv`` and returns its exit code."""
    from toolbox.cli.main import test_main

    return lambda *argv: run_main(test_main, list(argv))


@pytest.fixture
def signal_at_step(monkeypatch):
    """Sends ``signum`` to this process right after optimizer step ``step`` completes."""

    from toolbox.training.display import ProgressDisplay

    def arrange(step: int, signum: int = signal.SIGTERM, times: int = 1) -> None:
        advance = ProgressDisplay.advance

        def advance_and_signal(self) -> None:
            advance(self)
            if self.steps == step:
                for _ in range(times):
                    os.kill(os.getpid(), signum)

        monkeypatch.setattr(ProgressDisplay, "advance", advance_and_signal)

    return arrange
