"""Metrics that are not a sum and a count (macro F1, AUROC, balanced accuracy) and test.py's
per-class tables: equal to scikit-learn's on the predictions test.py writes, exact whatever
the batch size, the same over torchrun ranks as in one process."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from tests.conftest import TINY, run_main
from toolbox.config import TrainingConfig

CLASS_METRICS = ("f1_macro", "auroc", "balanced_accuracy")
NUM_TEST = 200  # neither 7 nor the 32-sample batches divide it
NUM_VAL = 32  # TINY's: 320 training samples less 10 %


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Synthetic's 10 classes (noisy enough to be half learnt), evaluated in batches of 7
    during training and by test.py."""
    from toolbox.cli.main import test_main, train_main

    outputs = tmp_path_factory.mktemp("outputs")
    argv = [*TINY, "--data.num-test", str(NUM_TEST), "--data.noise", "2", "--epochs", "3"]
    argv += ["--eval-batch-size", "7"]
    argv += ["--metrics", "accuracy", *CLASS_METRICS, "--monitor", "val_f1_macro"]
    assert run_main(train_main, [*argv, "--output-dir", str(outputs), "--run-name", "run"]) == 0
    run_dir = outputs / "run"
    assert run_main(test_main, [str(run_dir), "--device", "cpu", "--batch-size", "7"]) == 0
    return run_dir


def written(run_dir: Path, split: str = "test") -> tuple[dict, pd.DataFrame, np.ndarray]:
    """test.py's metrics, predictions and class probabilities (N, C) of ``split``."""
    out = run_dir / "test"
    (metrics,) = pd.read_csv(out / f"{split}_metrics.csv").to_dict("records")
    predictions = pd.read_csv(out / f"{split}_predictions.csv")
    probabilities = pd.read_csv(
        out / ("probabilities.csv" if split == "test" else f"{split}_probabilities.csv")
    )
    assert (probabilities["index"] == predictions["index"]).all()
    return metrics, predictions, probabilities.drop(columns="index").to_numpy()


def test_f1_auroc_and_balanced_accuracy_equal_scikit_learn_on_the_written_predictions(run_dir):
    metrics, predictions, probabilities = written(run_dir)
    target, predicted = predictions["target"], predictions["prediction"]
    assert len(predictions) == NUM_TEST and probabilities.shape == (NUM_TEST, 10)
    # The probabilities are those the predictions were made from.
    assert (probabilities.argmax(axis=1) == predicted).all()
    np.testing.assert_allclose(probabilities.max(axis=1), predictions["probability"], rtol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    # float32 sums and divisions in torchmetrics: about 1e-8 from scikit-learn's float64.
    assert metrics["f1_macro"] == pytest.approx(f1_score(target, predicted, average="macro"))
    assert metrics["auroc"] == pytest.approx(
        roc_auc_score(target, probabilities, multi_class="ovr", average="macro")
    )
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(target, predicted))
    # Half-trained on noisy prototypes: none of them is trivially 0 or 1.
    assert 0.2 < metrics["f1_macro"] < metrics["auroc"] < 1.0


def test_training_evaluations_in_batches_of_7_equal_one_batch_over_the_split(
    run_dir, tmp_path, evaluate, capsys
):
    """metrics.csv's last row was evaluated in batches of 7 (32 samples: the last batch
    holds 4); test.py on the same weights in one batch of 32 gives the same values. A
    mean of per-batch F1 or AUROC would not."""
    last_row = read_rows(run_dir / "metrics.csv")[-1]
    copy = shutil.copytree(run_dir, tmp_path / "run")  # test/ files of its own
    arguments = ["--split", "val", "--checkpoint", "last", "--batch-size", str(NUM_VAL)]
    assert evaluate(str(copy), "--device", "cpu", *arguments) == 0
    metrics, predictions, _ = written(copy, "val")
    assert len(predictions) == NUM_VAL
    for name in ("accuracy", *CLASS_METRICS):
        assert metrics[name] == pytest.approx(float(last_row[f"val_{name}"]), rel=1e-6), name
    shown = capsys.readouterr().out
    assert "val_confusion_matrix.csv" in shown and "val_confusion_matrix.png" in shown


def test_confusion_matrix_and_per_class_table_match_scikit_learn(run_dir):
    _, predictions, _ = written(run_dir)
    target, predicted = predictions["target"], predictions["prediction"]
    out = run_dir / "test"
    matrix = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    labels = [str(k) for k in range(10)]  # synthetic names its classes by their numbers
    assert list(matrix.index.astype(str)) == list(matrix.columns) == labels
    assert matrix.to_numpy().sum() == NUM_TEST
    # Rows are true classes, columns predicted ones.
    np.testing.assert_array_equal(matrix.to_numpy(), confusion_matrix(target, predicted))

    per_class = pd.read_csv(out / "per_class.csv")
    assert list(per_class.columns) == ["class", "support", "accuracy", "precision", "f1"]
    counts = matrix.to_numpy()
    np.testing.assert_array_equal(per_class["support"], counts.sum(axis=1))
    np.testing.assert_allclose(per_class["accuracy"], counts.diagonal() / counts.sum(axis=1))
    precision, recall, f1, support = precision_recall_fscore_support(
        target, predicted, labels=range(10), zero_division=0
    )
    np.testing.assert_array_equal(per_class["support"], support)
    for column, expected in [("accuracy", recall), ("precision", precision), ("f1", f1)]:
        np.testing.assert_allclose(per_class[column], expected, rtol=1e-6, err_msg=column)

    picture = out / "confusion_matrix.png"
    assert picture.read_bytes().startswith(b"\x89PNG")
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]  # temporaries


def test_monitor_val_f1_macro_keeps_the_highest_value(run_dir):
    for name in CLASS_METRICS:
        assert TrainingConfig(metrics=(name,), monitor=f"val_{name}").monitor_mode == "max"
    rows = read_rows(run_dir / "metrics.csv")
    scores = [float(row["val_f1_macro"]) for row in rows]
    assert len(set(scores)) > 1  # otherwise any epoch would do
    best = torch.load(run_dir / "model_best.pth.tar", weights_only=True)["progress"]
    assert best["best_value"] == pytest.approx(max(scores))
    assert best["epoch"] == int(rows[scores.index(max(scores))]["epoch"])


def two_named_classes(path: Path, count: int = 300) -> None:
    """Two overlapping blobs of 4 features, the second class's name with a space."""
    generator = torch.Generator().manual_seed(3)
    target = torch.randint(2, (count,), generator=generator)
    inputs = target.unsqueeze(1) * 1.5 + torch.randn(count, 4, generator=generator)
    torch.save({"input": inputs, "target": target, "class_names": ["cat", "grey dog"]}, path)


def test_two_classes_score_class_one_and_the_tables_name_the_classes(train, evaluate, tmp_path):
    two_named_classes(tmp_path / "pets.pt")
    argv = ["--dataset", "tensors", "--data.path", str(tmp_path / "pets.pt"), "--arch", "mlp"]
    argv += ["--metrics", "accuracy", *CLASS_METRICS, "--epochs", "2", "--device", "cpu"]
    assert train(*argv, "--output-dir", str(tmp_path), "--run-name", "pets") == 0
    run_dir = tmp_path / "pets"
    assert evaluate(str(run_dir), "--device", "cpu", "--batch-size", "7") == 0

    metrics, predictions, probabilities = written(run_dir)
    target = predictions["target"]
    # The binary AUROC of class 1's probability, as scikit-learn scores two classes.
    assert metrics["auroc"] == pytest.approx(roc_auc_score(target, probabilities[:, 1]))
    assert metrics["f1_macro"] == pytest.approx(
        f1_score(target, predictions["prediction"], average="macro")
    )
    assert 0.6 < metrics["auroc"] < 1.0  # the blobs overlap
    matrix = pd.read_csv(run_dir / "test" / "confusion_matrix.csv", index_col=0)
    assert list(matrix.index) == list(matrix.columns) == ["cat", "grey dog"]
    assert matrix.loc["grey dog"].sum() == (target == 1).sum()
    per_class = pd.read_csv(run_dir / "test" / "per_class.csv")
    assert list(per_class["class"]) == ["cat", "grey dog"]


def test_regression_gets_no_class_tables(train, evaluate, tmp_path):
    regression = [*TINY, "--data.task", "regression", "--criterion", "mse", "--metrics", "mae"]
    assert train(*regression, "--epochs", "1", "--run-name", "reg") == 0
    run_dir = tmp_path / "outputs" / "reg"
    assert evaluate(str(run_dir), "--device", "cpu") == 0
    names = {path.name for path in (run_dir / "test").iterdir()}
    assert names == {"test_metrics.csv", "test_predictions.csv"}


@pytest.mark.slow
def test_two_processes_give_the_class_metrics_of_one(train, tmp_path):
    """torchmetrics gathers the states of both ranks (17 and 16 of the 33 validation
    samples, in batches of 5) before computing, so the metrics are those of the whole split,
    as one process computes them."""
    from tests.test_distributed import SMALL, rows, torchrun

    common = [*SMALL, "--grad-accum", "2", "--metrics", "accuracy", *CLASS_METRICS]
    common += ["--eval-batch-size", "5", "--output-dir", str(tmp_path)]
    two = torchrun(*common, "--batch-size", "8", "--run-name", "two")
    assert two.returncode == 0, two.stdout + two.stderr
    assert train(*common, "--batch-size", "16", "--run-name", "one") == 0
    one_rows, two_rows = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert len(one_rows) == len(two_rows) == 2
    for single, parallel in zip(one_rows, two_rows, strict=True):
        for name in ("accuracy", *CLASS_METRICS):
            column = f"val_{name}"
            assert float(parallel[column]) == pytest.approx(float(single[column]), abs=1e-6)


@pytest.mark.slow
def test_a_process_without_validation_samples_gets_a_message_not_a_hang(tmp_path):
    """One validation sample for two processes: torchmetrics could not gather the empty
    rank's states, so every rank says so at the first evaluation."""
    from tests.test_distributed import SMALL, torchrun

    result = torchrun(
        *SMALL,
        *("--data.val-fraction", "0.003", "--metrics", "f1_macro", "--dist-timeout", "60"),
        *("--output-dir", str(tmp_path)),
    )
    assert result.returncode != 0
    assert "1 of the 2 processes got none of the 1 samples" in result.stdout + result.stderr
