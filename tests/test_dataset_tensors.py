"""The tensors dataset: a user's .pt or .npz file of arrays, written here with torch.save and
numpy.savez, read, split and trained on, and the mistakes a user makes with it (each one
message, exit 2)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from toolbox.datasets import DATASETS
from toolbox.datasets.tensors import Tensors
from toolbox.errors import UserError

FAST = ["--batch-size", "32", "--epochs", "2", "--log-every", "5", "--device", "cpu"]


def blobs(count: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three well separated classes of 6 features, plus a per-row weight and row id."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(3, (count,), generator=generator)
    centres = torch.tensor([[4.0] * 6, [-4.0] * 6, [4.0, -4.0] * 3])
    inputs = centres[target] + torch.randn(count, 6, generator=generator)
    return {"input": inputs, "target": target, "row_id": torch.arange(count) * 10}


def linear(count: int = 300) -> dict[str, np.ndarray]:
    """A regression: two targets, linear in 5 features plus a little noise."""
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(count, 5))
    weights = rng.normal(size=(5, 2))
    target = inputs @ weights + rng.normal(0, 0.05, size=(count, 2))
    return {"input": inputs, "target": target}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_a_pt_classification_set_trains_learns_and_evaluates(train, evaluate, tmp_path):
    data = {**blobs(), "class_names": ["north", "south", "east"]}
    torch.save(data, tmp_path / "features.pt")
    argv = ["--dataset", "tensors", "--data.path", str(tmp_path / "features.pt")]
    argv += ["--arch", "mlp", "--optim.lr", "0.01", "--metrics", "accuracy"]
    assert train(*argv, *FAST, "--output-dir", str(tmp_path), "--run-name", "blobs") == 0
    run_dir = tmp_path / "blobs"
    rows = read_rows(run_dir / "metrics.csv")
    assert float(rows[-1]["val_accuracy"]) >= 0.9  # chance: about 1/3

    assert evaluate(str(run_dir), "--device", "cpu") == 0
    predictions = read_rows(run_dir / "test" / "test_predictions.csv")
    assert len(predictions) == 40  # --data.test-fraction 0.1 of 400 rows
    # Each prediction names its row of the file, and the file's class names are used.
    for prediction in predictions:
        row = int(prediction["row"])
        assert int(prediction["target"]) == data["target"][row].item()
    assert {p["prediction_name"] for p in predictions} <= {"north", "south", "east"}


def test_an_npz_regression_set_trains_with_mse_and_mae(train, tmp_path):
    np.savez(tmp_path / "linear.npz", **linear())
    config = Tensors(path=str(tmp_path / "linear.npz"))
    assert config.task == "regression"  # known before build, from the float target
    argv = ["--dataset", "tensors", "--data.path", str(tmp_path / "linear.npz"), "--arch", "mlp"]
    argv += ["--criterion", "mse", "--metrics", "mae", "--optim.lr", "0.01", *FAST]
    assert train(*argv, "--epochs", "4", "--output-dir", str(tmp_path), "--run-name", "r") == 0
    rows = read_rows(tmp_path / "r" / "metrics.csv")
    maes = [float(row["val_mae"]) for row in rows]
    assert maes[-1] < maes[0]  # it learns: the mean absolute error falls
    splits = config.build()
    assert splits.info.num_outputs == 2 and splits.info.input_shape == (5,)
    assert splits.train["input"].dtype == torch.float32  # float64 in the file
    # Per-feature statistics of the training split, for (N, F) inputs.
    assert len(splits.info.mean) == 5
    torch.testing.assert_close(
        torch.tensor(splits.info.mean), splits.train["input"].double().mean(0), check_dtype=False
    )


def test_integer_targets_are_classification_unless_asked_otherwise(tmp_path):
    torch.save(blobs(), tmp_path / "b.pt")
    auto = Tensors(path=str(tmp_path / "b.pt"))
    assert auto.task == "classification"
    info = auto.build().info
    assert info.num_outputs == 3 and info.class_names == ("0", "1", "2")
    forced = Tensors(path=str(tmp_path / "b.pt"), task="regression").build()
    assert forced.info.task == "regression" and forced.train["target"].dtype == torch.float32


def test_extra_arrays_travel_with_their_rows_in_every_split(tmp_path):
    data = blobs()
    torch.save(data, tmp_path / "b.pt")
    splits = Tensors(path=str(tmp_path / "b.pt")).build()
    for name in ("train", "val", "test"):
        split = splits.split(name)
        assert set(split) == {"input", "target", "row_id"}
        rows = [int(row) for row in splits.sources[name]]
        # The same rows of every array: row_id is 10 * the row number.
        assert split["row_id"].tolist() == [10 * row for row in rows]
        assert torch.equal(split["input"], data["input"][rows])
        assert torch.equal(split["target"], data["target"][rows])
    assert splits.source_column == "row"


def test_splits_are_deterministic_disjoint_and_cover_every_row(tmp_path):
    torch.save(blobs(), tmp_path / "b.pt")
    path = str(tmp_path / "b.pt")

    def rows(**options) -> dict[str, list[str]]:
        return Tensors(path=path, **options).build().sources

    first = rows()
    assert first == rows()  # the same rows each time
    assert [len(first[name]) for name in ("train", "val", "test")] == [324, 36, 40]
    everything = first["train"] + first["val"] + first["test"]
    assert sorted(map(int, everything)) == list(range(400))  # disjoint and complete
    assert rows(split_seed=1)["test"] != first["test"]  # the seed picks them


def test_uint8_images_keep_their_type_and_get_per_channel_statistics(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8, generator=generator)
    images[:, 0] //= 4  # channel 0 darker than the others
    np.savez(tmp_path / "images.npz", input=images.numpy(), target=np.arange(50) % 2)
    splits = Tensors(path=str(tmp_path / "images.npz")).build()
    assert splits.train["input"].dtype == torch.uint8
    info = splits.info
    assert info.value_range == (0.0, 255.0) and info.input_shape == (3, 4, 4)
    assert len(info.mean) == 3 and info.mean[0] < info.mean[1] / 2


class Opaque:
    pass


def bad_files(tmp_path: Path) -> list[tuple[str, list[str]]]:
    """(path, what the message must name) for each mistake."""
    torch.save(
        {"input": torch.zeros(4, 2), "target": torch.zeros(4), "o": Opaque()},
        tmp_path / "pickled.pt",
    )
    np.savez(
        tmp_path / "ragged.npz", input=np.zeros((10, 2)), target=np.zeros(9), mask=np.zeros(10)
    )
    torch.save({"input": torch.zeros(4, 2), "labels": torch.zeros(4)}, tmp_path / "notarget.pt")
    return [
        (str(tmp_path / "pickled.pt"), ["--data.path", "pickled.pt", "weights_only"]),
        (str(tmp_path / "ragged.npz"), ["ragged.npz", "input 10", "target 9", "mask 10"]),
        (str(tmp_path / "notarget.pt"), ["notarget.pt", "'target'", "labels"]),
        (str(tmp_path / "absent.pt"), ["--data.path", "absent.pt", "does not exist"]),
    ]


def test_each_bad_file_is_one_message_and_exit_2(train, tmp_path, capsys):
    for path, named in bad_files(tmp_path):
        capsys.readouterr()
        assert train("--dataset", "tensors", "--data.path", path, "--arch", "mlp", *FAST) == 2
        captured = capsys.readouterr()
        message = " ".join(captured.err.split())  # rich may wrap long lines
        for part in named:
            assert part in message, (path, message)
        assert "Traceback" not in captured.err
        # build() says the same where the checks are skipped.
        with pytest.raises(UserError):
            Tensors(path=path, task="classification").build()


def test_a_missing_path_option_is_named_at_build(tmp_path):
    assert Tensors().problems() == []  # the defaults of every component have no problems
    with pytest.raises(UserError, match="--data.path is not given"):
        Tensors().build()
    assert DATASETS.get("tensors") is Tensors


def test_train_py_without_a_path_says_the_path_is_missing(train, capsys):
    # Before the file is named its task is unknown: no criterion is refused for it.
    assert train("--dataset", "tensors") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--data.path is not given" in err and "does not apply" not in err
