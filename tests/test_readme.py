"""The README's promises: its extension examples work as one new file each."""

from __future__ import annotations

import re
import sys

import pandas as pd
import pytest

import toolbox.datasets
import toolbox.models
from tests.conftest import REPO
from toolbox.datasets import DATASETS
from toolbox.models import MODELS


def readme_example(path: str) -> str:
    """The python block that follows the README's mention of ``path``."""
    text = (REPO / "README.md").read_text()
    match = re.search(re.escape(path) + r".*?```python\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no example for {path}"
    return match.group(1)


@pytest.fixture
def added_component(tmp_path, monkeypatch):
    """Puts a module into a registry's package as a new file would, then restores it."""
    added = []

    def add(package, registry, module: str, source: str) -> None:
        folder = tmp_path / package.__name__
        folder.mkdir(exist_ok=True)
        (folder / f"{module}.py").write_text(source)
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_imported", False)
        added.append(f"{package.__name__}.{module}")

    yield add
    for name in added:
        sys.modules.pop(name, None)


def test_readme_model_and_dataset_examples_train_and_test(
    added_component, train, evaluate, tmp_path, capsys
):
    added_component(
        toolbox.models, MODELS, "linear_probe", readme_example("toolbox/models/linear_probe.py")
    )
    added_component(toolbox.datasets, DATASETS, "iris", readme_example("toolbox/datasets/iris.py"))
    assert "linear_probe" in MODELS.names() and "iris" in DATASETS.names()

    with pytest.raises(SystemExit):
        train("--arch", "linear_probe", "--dataset", "iris", "--help")
    shown = capsys.readouterr().out
    assert "--model.bias" in shown and "--data.test-fraction" in shown

    argv = [
        "--arch",
        "linear_probe",
        "--dataset",
        "iris",
        "--epochs",
        "30",
        "--batch-size",
        "16",
        "--optim.lr",
        "0.05",
        "--device",
        "cpu",
        "--run-name",
        "iris",
    ]
    assert train(*argv) == 0
    assert evaluate(str(tmp_path / "outputs" / "iris")) == 0
    metrics = pd.read_csv(tmp_path / "outputs" / "iris" / "test" / "test_metrics.csv")
    assert metrics["accuracy"][0] >= 0.8
