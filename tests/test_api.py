"""The Python API: toolbox.config, toolbox.train, toolbox.test and toolbox.load_model."""

from __future__ import annotations

import json
import re
import shlex

import pandas as pd
import pytest
import torch

import toolbox
from tests.conftest import REPO
from toolbox.errors import UserError
from toolbox.models.cnn import CNN

QUICK = {"dataset": "digits", "epochs": 2, "device": "cpu", "batch_size": 64}


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From Python", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # its run goes to ./outputs
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    result, model = namespace["result"], namespace["model"]
    assert result.run_dir.parent == tmp_path / "outputs"
    assert result.best["val_accuracy"] > 0.8
    accuracy = capsys.readouterr().out.split()[-1]
    assert float(accuracy) > 0.8
    assert not model.training


def test_config_builds_through_the_registries_like_the_command_line():
    from toolbox.cli.parse import parse_training_config

    by_keywords = toolbox.config(
        arch="cnn", dataset="digits", epochs=5, **{"optim.lr": 1e-3, "model.hidden_size": 32}
    )
    by_flags = parse_training_config(
        "--arch cnn --dataset digits --epochs 5 --optim.lr 1e-3 --model.hidden-size 32".split()
    )
    assert by_keywords == by_flags
    assert (
        toolbox.config(model=CNN(hidden_size=32), dataset="digits", epochs=5, optim={"lr": 1e-3})
        == by_flags
    )


@pytest.mark.parametrize(
    "options, named",
    [
        ({"arch": "resnet9"}, "resnet9"),
        ({"optim.lrr": 0.1}, "lrr"),
        ({"epochs": 0}, "--epochs is 0"),
        ({"epochs": "five"}, "epochs"),
        ({"optimiser.lr": 0.1}, "'optimiser.lr'"),
        ({"arch": "mlp", "model": CNN()}, "arch is 'mlp'"),
    ],
)
def test_a_bad_config_raises_the_message_train_py_prints(options, named):
    with pytest.raises(UserError) as raised:
        toolbox.config(**options)
    assert named in str(raised.value)


def test_train_returns_the_run_and_records_the_command_that_reruns_it(train, tmp_path):
    cfg = toolbox.config(**QUICK, output_dir=tmp_path / "api", run_name="py")
    result = toolbox.train(cfg)
    assert result.run_dir == tmp_path / "api" / "py"
    metrics = pd.read_csv(result.run_dir / "metrics.csv")
    pd.testing.assert_frame_equal(result.metrics, metrics)
    best_row = metrics.loc[metrics["val_loss"].idxmin()].to_dict()
    assert result.best == best_row
    session = json.loads((result.run_dir / "run.json").read_text())["sessions"][0]
    command = shlex.split(session["command"])
    assert command == ["python", "train.py", "--config", str(result.run_dir / "config.json")]
    # That command (in-process here) trains the same run again.
    assert train(*command[2:], "--run-name", "again", output_dir=tmp_path / "api") == 0
    again = pd.read_csv(tmp_path / "api" / "again" / "metrics.csv")
    pd.testing.assert_frame_equal(
        again.drop(columns="elapsed_s"), metrics.drop(columns="elapsed_s")
    )


def test_test_returns_test_py_predictions(tmp_path):
    result = toolbox.train(toolbox.config(**QUICK, output_dir=tmp_path))
    predictions = toolbox.test(result.run_dir, device="cpu")
    written = pd.read_csv(result.run_dir / "test" / "test_predictions.csv")
    pd.testing.assert_frame_equal(predictions, written)
    assert len(predictions) == 359  # digits' test split


def test_load_model_takes_raw_inputs_and_predicts_like_test_py(tmp_path):
    """Its normalisation is inside: raw pixels in, test.py's predictions out."""
    result = toolbox.train(toolbox.config(**QUICK, output_dir=tmp_path, ema_decay=0.9))
    predictions = toolbox.test(result.run_dir, device="cpu")
    splits = toolbox.config(**QUICK).data.build()
    model = toolbox.load_model(result.run_dir)
    assert not model.training
    with torch.no_grad():
        predicted = model(splits.test["input"]).argmax(1)
    assert predicted.tolist() == predictions["prediction"].tolist()


def test_load_model_of_a_run_that_is_not_there_raises(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        toolbox.load_model(tmp_path / "nothing")


def test_train_refuses_what_is_not_a_config():
    with pytest.raises(UserError, match="TrainingConfig"):
        toolbox.train({"arch": "cnn"})
