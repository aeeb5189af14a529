"""Every file in examples/ runs as a user runs it, and trains what its docstring says.

The examples are found by glob, so a new one is run (and must exit 0 and write metrics.csv)
without anyone writing its test; EXPECTED adds what each known one must log and reach.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.py"))


@dataclass(frozen=True)
class Expected:
    columns: tuple[str, ...]
    """metrics.csv columns besides epoch, step, lr, train_loss, val_loss and elapsed_s."""
    chance: float
    """Accuracy of guessing the most frequent class (about 1 / classes); val_accuracy must beat
    it by a margin."""
    help_shows: tuple[str, ...]
    """What --help must mention: the example's component and its options."""


EXPECTED = {
    "01_custom_model.py": Expected(
        ("val_accuracy",), 0.1, ("res_mlp", "--model.width", "--model.expansion")
    ),
    "02_custom_dataset.py": Expected(
        ("val_accuracy",), 0.5, ("moons", "--data.noise", "--data.num-samples")
    ),
    "03_custom_training_step.py": Expected(
        ("train_ce", "train_recon", "val_ce", "val_recon", "val_accuracy"),
        0.1,
        ("ae_classifier", "--model.beta", "--model.code-size"),
    ),
}
BASE_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "elapsed_s")
RUN_NAME = "example"


def test_the_examples_are_there():
    names = [path.name for path in EXAMPLES]
    assert len(names) >= 3, names
    assert set(EXPECTED) <= set(names), "EXPECTED names an example that is gone"


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> dict[str, tuple[int, Path, str]]:
    """Runs every example at once, as `python examples/<file> --output-dir ... --device cpu`;
    returns each one's exit code, run directory and output.

    Each spends most of its ~12 s of CPU importing torch and scikit-learn, so they overlap on
    2 cores; one thread each keeps the tiny models' matmuls from fighting over the cores.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = {}
    for path in EXAMPLES:
        out = tmp_path_factory.mktemp(path.stem)
        log = (out / "output.txt").open("w")
        argv = ["--output-dir", str(out), "--device", "cpu", "--run-name", RUN_NAME]
        process = subprocess.Popen(
            [sys.executable, str(path), *argv], cwd=REPO, env=env, stdout=log, stderr=log
        )
        started[path.name] = (process, out, log)
    results = {}
    try:
        for name, (process, out, _log) in started.items():
            code = process.wait(timeout=300)
            results[name] = (code, out / RUN_NAME, (out / "output.txt").read_text())
    finally:
        for process, _, log in started.values():
            if process.poll() is None:  # a wait above timed out: leave nothing running
                process.kill()
                process.wait()
            log.close()
    return results


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_example_trains(example, finished_runs):
    code, run_dir, output = finished_runs[example.name]
    assert code == 0, output
    metrics = pd.read_csv(run_dir / "metrics.csv")
    expected = EXPECTED.get(example.name)
    columns = BASE_COLUMNS + (expected.columns if expected else ())
    assert set(columns) <= set(metrics.columns), (list(metrics.columns), output)
    assert metrics[["train_loss", "val_loss"]].notna().all().all()
    if expected is not None and "val_accuracy" in expected.columns:
        # Halfway from chance to perfect: a margin that no broken model reaches by luck.
        assert metrics["val_accuracy"].iloc[-1] > (1 + expected.chance) / 2, metrics


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_example_help_lists_its_component(example):
    shown = subprocess.run(
        [sys.executable, str(example), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "--epochs" in shown.stdout  # train.py's help
    expected = EXPECTED.get(example.name)
    for text in expected.help_shows if expected else ():
        assert text in shown.stdout, f"{text} missing from {example.name} --help"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_the_commands_an_example_prints_evaluate_and_resume_its_run(example, finished_runs):
    # train.py and test.py do not know an example's own components: the hints must name it.
    code, run_dir, output = finished_runs[example.name]
    assert code == 0, output
    log = (run_dir / "training.log").read_text()
    hint = re.search(r"Evaluate on the test split with: python (.+) test (\S+)$", log, re.M)
    assert hint is not None and hint.groups() == (str(example), str(run_dir)), log
    evaluated = subprocess.run(
        [sys.executable, str(example), "test", str(run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert (run_dir / "test" / "test_metrics.csv").exists()
    resumed = subprocess.run(
        [sys.executable, str(example), "--resume", str(run_dir / "checkpoint.pth.tar")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The run is complete, so resuming it is refused, but by the toolbox, knowing the model.
    assert resumed.returncode == 2, resumed.stderr
    assert "has already trained 5 of --epochs 5" in resumed.stderr
