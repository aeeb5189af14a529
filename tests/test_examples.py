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

# Every test here starts train.py / test.py processes (the examples as users run them).
pytestmark = pytest.mark.slow

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
    "04_gan.py": Expected(
        ("train_d_loss", "train_g_loss", "val_d_loss", "val_g_loss", "lr_generator"),
        0.0,  # no classifier: no accuracy to beat
        ("dcgan", "--model.latent-size", "--model.beta1"),
    ),
}
BASE_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "elapsed_s")
RUN_NAME = "example"


def test_the_examples_are_there():
    names = [path.name for path in EXAMPLES]
    assert len(names) >= 3, names
    assert set(EXPECTED) <= set(names), "EXPECTED names an example that is gone"


def run_at_once(commands: dict[str, list[str]], out: Path) -> dict[str, tuple[int, str]]:
    """Runs the commands (each an argv after `python`) side by side from the repository root;
    returns each one's exit code and output (stdout and stderr).

    Each spends most of its ~12 s of CPU importing torch and scikit-learn, so they overlap on
    2 cores; one thread each keeps the tiny models' matmuls from fighting over the cores.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = {}
    for name, argv in commands.items():
        log_path = out / f"{name}.output.txt"
        log = log_path.open("w")
        process = subprocess.Popen(
            [sys.executable, *argv], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        started[name] = (process, log, log_path)
    results = {}
    try:
        for name, (process, log, log_path) in started.items():
            code = process.wait(timeout=300)
            log.close()
            results[name] = (code, log_path.read_text())
    finally:
        for process, log, _ in started.values():
            if process.poll() is None:  # a wait above timed out: leave nothing running
                process.kill()
                process.wait()
            log.close()
    return results


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> dict[str, tuple[int, Path, str]]:
    """Runs every example at once, as `python examples/<file> --output-dir ... --device cpu`;
    returns each one's exit code, run directory and output."""
    out = tmp_path_factory.mktemp("examples")
    argv = ["--output-dir", str(out), "--device", "cpu"]
    commands = {
        path.name: [str(path), *argv, "--run-name", f"{path.stem}-{RUN_NAME}"] for path in EXAMPLES
    }
    return {
        name: (code, out / f"{Path(name).stem}-{RUN_NAME}", output)
        for name, (code, output) in run_at_once(commands, out).items()
    }


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


@pytest.fixture(scope="module")
def hinted_commands(finished_runs, tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Evaluates and resumes every example's run through the example, all at once: the
    commands the examples print at the end, and after a stop."""
    commands = {}
    for path in EXAMPLES:
        run_dir = finished_runs[path.name][1]
        commands[f"{path.stem}-test"] = [str(path), "test", str(run_dir)]
        commands[f"{path.stem}-resume"] = [
            str(path),
            "--resume",
            str(run_dir / "checkpoint.pth.tar"),
        ]
    return run_at_once(commands, tmp_path_factory.mktemp("hints"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_the_commands_an_example_prints_evaluate_and_resume_its_run(
    example, finished_runs, hinted_commands
):
    # train.py and test.py do not know an example's own components: the hints must name it.
    code, run_dir, output = finished_runs[example.name]
    assert code == 0, output
    log = (run_dir / "training.log").read_text()
    hint = re.search(r"Evaluate on the test split with: python (.+) test (\S+)$", log, re.M)
    assert hint is not None and hint.groups() == (str(example), str(run_dir)), log
    code, output = hinted_commands[f"{example.stem}-test"]
    assert code == 0, output
    assert (run_dir / "test" / "test_metrics.csv").exists()
    # The run is complete, so resuming it is refused, but by the toolbox, knowing the model.
    code, output = hinted_commands[f"{example.stem}-resume"]
    assert code == 2, output
    assert "has already trained 5 of --epochs 5" in output
