"""The table dataset: a user's CSV/TSV file, written here with pandas, read, encoded, split
and trained on, and the mistakes a user makes with it (each one message, exit 2)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from toolbox.datasets.table import Table
from toolbox.errors import UserError

FAST = ["--batch-size", "32", "--epochs", "3", "--log-every", "5", "--device", "cpu"]


def cells(path: Path, count: int = 300, seed: int = 0) -> Path:
    """A separable classification table: the label is decided by ``size`` and ``colour``."""
    rng = np.random.default_rng(seed)
    size = rng.normal(50.0, 10.0, count)
    colour = rng.choice(["red", "green", "blue"], count)
    score = (size - 50.0) / 10.0 + np.where(colour == "red", 3.0, -1.0)
    frame = pd.DataFrame({"id": range(count), "size": size, "colour": colour})
    frame["label"] = np.where(score > 0.5, "tumour", "healthy")
    frame.to_csv(path, index=False)
    return path


def houses(path: Path, count: int = 400, sep: str = "\t") -> Path:
    """A regression table: the price is a linear function of area and rooms plus noise."""
    rng = np.random.default_rng(1)
    area = rng.uniform(40, 200, count)
    rooms = rng.integers(1, 6, count)
    price = 3.0 * area + 20.0 * rooms + rng.normal(0, 5, count)
    pd.DataFrame({"area": area, "rooms": rooms, "price": price}).to_csv(path, sep=sep, index=False)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_csv_classification_table_trains_evaluates_and_names_its_rows(train, evaluate, tmp_path):
    table = cells(tmp_path / "cells.csv")
    argv = ["--dataset", "table", "--data.path", str(table), "--data.target", "label"]
    argv += ["--data.drop", "id", "--arch", "mlp", "--optim.lr", "0.01", "--metrics", "accuracy"]
    assert train(*argv, *FAST, "--output-dir", str(tmp_path), "--run-name", "cells") == 0
    run_dir = tmp_path / "cells"
    rows = read_rows(run_dir / "metrics.csv")
    assert float(rows[-1]["val_accuracy"]) >= 0.85  # chance: about 0.5

    assert evaluate(str(run_dir), "--device", "cpu") == 0
    predictions = read_rows(run_dir / "test" / "test_predictions.csv")
    assert len(predictions) == 30  # --data.test-fraction 0.1 of 300 rows
    original = pd.read_csv(table)
    # Each prediction names its data row, and the class by its name in the file.
    for prediction in predictions:
        assert prediction["target_name"] == original["label"][int(prediction["row"])]
    correct = sum(p["prediction_name"] == p["target_name"] for p in predictions)
    assert correct / len(predictions) >= 0.8


def test_a_tsv_regression_trains_with_mse_and_its_val_loss_drops(train, tmp_path):
    table = houses(tmp_path / "houses.tsv")
    argv = ["--dataset", "table", "--data.path", str(table), "--data.target", "price"]
    argv += ["--criterion", "mse", "--metrics", "mae", "--optim.lr", "0.03", *FAST]
    assert train(*argv, "--epochs", "6", "--output-dir", str(tmp_path), "--run-name", "h") == 0
    rows = read_rows(tmp_path / "h" / "metrics.csv")
    losses = [float(row["val_loss"]) for row in rows]
    assert losses[-1] < 0.5 * losses[0]
    assert "val_mae" in rows[-1]


def test_the_task_follows_the_target_before_anything_is_built(tmp_path):
    assert Table(path=str(cells(tmp_path / "c.csv")), target="label").task == "classification"
    assert Table(path=str(houses(tmp_path / "h.tsv")), target="price").task == "regression"
    rooms = Table(path=str(tmp_path / "h.tsv"), target="rooms", task="classification")
    splits = rooms.build()
    assert splits.info.task == "classification"
    assert splits.info.class_names == ("1", "2", "3", "4", "5")
    assert splits.train["target"].dtype == torch.int64


def test_a_parquet_table_reads_as_its_csv_does(tmp_path):
    csv_file = cells(tmp_path / "c.csv")
    frame = pd.read_csv(csv_file)
    frame.to_parquet(tmp_path / "c.parquet")
    from_csv = Table(path=str(csv_file), target="label").build()
    from_parquet = Table(path=str(tmp_path / "c.parquet"), target="label").build()
    assert from_parquet.info == from_csv.info  # class names, statistics, input shape
    for split in ("train", "val", "test"):
        for key, tensor in from_csv.split(split).items():
            assert torch.equal(from_parquet.split(split)[key], tensor)
    assert from_parquet.sources == from_csv.sources


def test_inputs_stay_raw_and_the_normaliser_gets_train_statistics_only(tmp_path):
    table = houses(tmp_path / "h.csv", count=200, sep=";")  # the delimiter is sniffed
    splits = Table(path=str(table), target="price").build()
    original = pd.read_csv(table, sep=";")
    train_rows = [int(row) for row in splits.sources["train"]]
    assert len(train_rows) == 162 and len(splits.sources["test"]) == 20  # 200 - 20 - 18
    # Stored inputs are the file's values in its units; the targets are (N, 1) float32.
    expected = torch.tensor(
        original.loc[train_rows, ["area", "rooms"]].to_numpy(), dtype=torch.float32
    )
    assert torch.allclose(splits.train["input"], expected)
    assert splits.train["target"].shape == (162, 1)
    assert splits.train["target"].dtype == torch.float32
    area = original["area"]
    assert splits.info.mean[0] == pytest.approx(area[train_rows].mean())
    assert splits.info.std[0] == pytest.approx(area[train_rows].std())
    assert abs(area.mean() - area[train_rows].mean()) > 1e-6  # the other splits differ


def test_categories_come_from_train_and_an_unseen_one_encodes_as_nothing(tmp_path):
    table = cells(tmp_path / "cells.csv")
    first = Table(path=str(table), target="label", drop=("id",)).build()
    assert first.info.input_shape == (4,)  # size, then blue/green/red one-hot
    assert first.info.mean[1:] == (0.0, 0.0, 0.0) and first.info.std[1:] == (1.0, 1.0, 1.0)
    assert set(first.train["input"][:, 1:].sum(dim=1).tolist()) == {1.0}
    frame = pd.read_csv(table)
    unseen = int(first.sources["test"][0])
    frame.loc[unseen, "colour"] = "violet"  # only in a test row
    frame.to_csv(table, index=False)

    onehot = Table(path=str(table), target="label", drop=("id",)).build()
    assert onehot.info.input_shape == (4,)
    assert onehot.sources["test"][0] == str(unseen)
    assert onehot.test["input"][0, 1:].tolist() == [0.0, 0.0, 0.0]
    index = Table(path=str(table), target="label", drop=("id",), categorical="index").build()
    assert index.info.input_shape == (2,)
    assert index.test["input"][0, 1].item() == 0.0  # reserved for unseen categories
    assert set(index.train["input"][:, 1].tolist()) == {1.0, 2.0, 3.0}


def test_drop_removes_a_column_from_the_inputs(tmp_path):
    table = cells(tmp_path / "cells.csv")
    kept = Table(path=str(table), target="label").build()
    dropped = Table(path=str(table), target="label", drop=("id", "size")).build()
    assert kept.info.input_shape == (5,) and dropped.info.input_shape == (3,)


def gappy(path: Path) -> Path:
    """A table with a missing number in row 3, a missing colour in row 5, no label in row 7."""
    frame = pd.read_csv(cells(path, count=100))
    frame.loc[3, "size"] = np.nan
    frame.loc[5, "colour"] = np.nan
    frame.loc[7, "label"] = np.nan
    frame.to_csv(path, index=False)
    return path


def test_missing_fill_uses_train_medians_and_a_missing_category(tmp_path, caplog):
    table = gappy(tmp_path / "gaps.csv")
    with caplog.at_level(logging.INFO, logger="toolbox"):
        splits = Table(path=str(table), target="label", drop=("id",)).build()
    assert "left out 1 rows without a label value" in caplog.text
    rows = {name: [int(row) for row in splits.sources[name]] for name in ("train", "val", "test")}
    assert 7 not in sum(rows.values(), []) and sum(map(len, rows.values())) == 99
    assert splits.info.input_shape == (5,)  # size, blue/green/missing/red if row 5 is in train
    inputs = torch.cat([splits.split(name)["input"] for name in rows])
    order = sum(rows.values(), [])
    original = pd.read_csv(table)
    train_median = original.loc[rows["train"], "size"].median()
    assert inputs[order.index(3), 0].item() == pytest.approx(train_median, rel=1e-6)
    assert 5 in rows["train"]  # split_seed 0: the missing colour is a category learnt in train
    assert inputs[order.index(5), 1:].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_missing_drop_leaves_the_incomplete_rows_out(tmp_path, caplog):
    table = gappy(tmp_path / "gaps.csv")
    with caplog.at_level(logging.INFO, logger="toolbox"):
        splits = Table(path=str(table), target="label", drop=("id",), missing="drop").build()
    assert "left out 2 rows with missing feature values" in caplog.text
    rows = sum((splits.sources[name] for name in ("train", "val", "test")), [])
    assert len(rows) == 97 and not {"3", "5", "7"} & set(rows)
    assert splits.info.input_shape == (4,)


def test_missing_error_refuses_the_table(tmp_path):
    table = gappy(tmp_path / "gaps.csv")
    with pytest.raises(UserError, match="--data.missing is error") as raised:
        Table(path=str(table), target="label", drop=("id",), missing="error").build()
    assert "size (1 rows)" in str(raised.value) and "colour (1 rows)" in str(raised.value)


def test_a_string_target_refuses_a_regression_criterion_before_reading_everything(
    capsys, train, tmp_path
):
    table = cells(tmp_path / "cells.csv")
    argv = ["--dataset", "table", "--data.path", str(table), "--data.target", "label"]
    assert train(*argv, "--criterion", "mse", *FAST) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--criterion mse does not apply to the classification dataset" in err


BAD = [
    pytest.param(
        ["--data.target", "diagnosis"],
        ["--data.target 'diagnosis' is not a column", "id, size, colour, label"],
        id="target-not-a-column",
    ),
    pytest.param([], ["--data.target is not given", "id, size, colour, label"], id="no-target"),
    pytest.param(
        ["--data.target", "label", "--data.drop", "id", "patient"],
        ["--data.drop names patient", "id, size, colour, label"],
        id="drop-unknown",
    ),
    pytest.param(
        ["--data.target", "label", "--data.drop", "label"],
        ["--data.drop names the target 'label'"],
        id="drop-target",
    ),
    pytest.param(
        ["--data.target", "label", "--data.path", "{missing}"],
        ["--data.path {missing} does not exist"],
        id="missing-file",
    ),
    pytest.param(
        ["--data.target", "label", "--data.path", "{gaps}", "--data.missing", "error"],
        ["--data.missing is error", "size (1 rows)", "--data.missing fill"],
        id="missing-error",
    ),
    pytest.param(
        ["--data.target", "label", "--data.task", "regression", "--criterion", "mse"]
        + ["--metrics", "mae"],
        ["--data.task is regression", "'label'"],
        id="labels-as-regression",
    ),
]


@pytest.mark.parametrize(("argv", "expect"), BAD)
def test_a_mistake_exits_2_with_one_message_naming_the_option(
    capsys, train, tmp_path, argv, expect
):
    files = {
        "cells": str(cells(tmp_path / "cells.csv")),
        "gaps": str(gappy(tmp_path / "gaps.csv")),
        "missing": str(tmp_path / "nowhere.csv"),
    }
    argv = ["--dataset", "table", "--data.path", files["cells"]] + [
        value.format(**files) for value in argv
    ]
    capsys.readouterr()
    assert train(*argv, *FAST) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    for fragment in expect:
        assert fragment.format(**files) in err, err
