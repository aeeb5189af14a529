"""predict.py: a trained run on new files, read as its dataset read its own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.test_dataset_folder import COLOURS, write_images
from toolbox.cli.predict import predict_main

FAST = ["--arch", "mlp", "--batch-size", "16", "--device", "cpu", "--epochs", "3"]


@pytest.fixture
def predict():
    from toolbox.cli.main import run_cli

    return lambda *argv: run_cli(predict_main, list(argv))


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def folder_run(train, tmp_path):
    """A run on a folder with its own test/ folder of PNG and JPEG images."""
    root = tmp_path / "images"
    write_images(root / "train", count=20, seed=1)
    write_images(root / "test", count=6, seed=2)
    argv = ["--dataset", "folder", "--data.root", str(root), "--data.image-size", "8"]
    assert train(*argv, *FAST, "--run-name", "f") == 0
    return tmp_path / "outputs" / "f", root


def test_predict_on_a_folder_agrees_with_test_py_on_the_same_files(
    folder_run, evaluate, predict, capsys
):
    run_dir, root = folder_run
    assert evaluate(str(run_dir), "--device", "cpu") == 0
    tested = pd.read_csv(run_dir / "test" / "test_predictions.csv")
    assert predict(str(run_dir), str(root / "test"), "--top-k", "2", "--device", "cpu") == 0
    predicted = pd.read_csv(run_dir / "predict" / "test.csv")
    assert len(predicted) == len(tested) == 18
    by_file = {
        str(root / path): name
        for path, name in zip(tested.path, tested.prediction_name, strict=True)
    }
    assert dict(zip(predicted.path, predicted.prediction_name, strict=True)) == by_file
    np.testing.assert_allclose(
        predicted.sort_values("path").probability,
        tested.assign(path=[str(root / p) for p in tested.path]).sort_values("path").probability,
        rtol=1e-5,
    )
    true = predicted.path.str.split("/").str[-2]
    accuracy = (true == predicted.prediction_name).mean()
    assert accuracy == pytest.approx((tested.target == tested.prediction).mean())
    assert (predicted.top1_name == predicted.prediction_name).all()
    assert (predicted.top1_probability >= predicted.top2_probability).all()
    assert set(predicted.top2_name) <= set(COLOURS)


def test_images_of_another_size_are_resized_like_the_training_images(folder_run, predict):
    run_dir, root = folder_run
    big = root.parent / "big"
    big.mkdir()
    colour = np.array(COLOURS["sky"], dtype=np.uint8)
    Image.fromarray(np.tile(colour, (40, 30, 1))).save(big / "wide.png")
    assert predict(str(run_dir), str(big / "wide.png"), "--device", "cpu") == 0
    predicted = pd.read_csv(run_dir / "predict" / "wide.csv")
    assert predicted.prediction_name.tolist() == ["sky"]


def test_unreadable_inputs_are_listed_and_skipped(folder_run, predict, capsys):
    run_dir, root = folder_run
    broken = root / "test" / "sky" / "broken.png"
    broken.write_bytes(b"not a png")
    assert predict(str(run_dir), str(root / "test"), "--name", "with-bad", "--device", "cpu") == 0
    err = flat(capsys.readouterr().err)
    assert "skipped 1 unreadable inputs" in err and str(broken) in err
    predicted = pd.read_csv(run_dir / "predict" / "with-bad.csv")
    assert len(predicted) == 18 and str(broken) not in set(predicted.path)


def test_a_table_run_predicts_on_a_new_table_encoded_like_its_training_rows(
    train, predict, tmp_path
):
    rng = np.random.default_rng(0)
    size = 300
    colour = rng.choice(["red", "green", "blue"], size)
    x = rng.normal(size=size) * 10 + 50
    label = np.where((colour == "red") | (x > 55), "yes", "no")
    pd.DataFrame({"colour": colour, "x": x, "label": label}).to_csv(tmp_path / "t.csv", index=False)
    argv = ["--dataset", "table", "--data.path", str(tmp_path / "t.csv"), "--data.target", "label"]
    assert train(*argv, *FAST, "--epochs", "20", "--run-name", "t") == 0
    new = pd.DataFrame({"x": [40.0, 70.0, 40.0, None], "colour": ["green", "blue", "red", "red"]})
    new.to_csv(tmp_path / "new.csv", index=False)  # other column order, a gap, no target
    run_dir = tmp_path / "outputs" / "t"
    assert predict(str(run_dir), str(tmp_path / "new.csv"), "--device", "cpu") == 0
    predicted = pd.read_csv(run_dir / "predict" / "new.csv")
    assert predicted.row.tolist() == [0, 1, 2, 3]
    assert predicted.prediction_name.tolist()[:3] == ["no", "yes", "yes"]


def test_a_tensor_file_of_inputs(train, predict, tmp_path):
    assert train("--dataset", "digits", *FAST, "--run-name", "d") == 0
    run_dir = tmp_path / "outputs" / "d"
    import toolbox

    splits = toolbox.config(dataset="digits").data.build()
    torch.save({"input": splits.test["input"][:10]}, tmp_path / "ten.pt")
    assert predict(str(run_dir), str(tmp_path / "ten.pt"), "--device", "cpu") == 0
    predicted = pd.read_csv(run_dir / "predict" / "ten.csv")
    model = toolbox.load_model(run_dir)
    with torch.no_grad():
        expected = model(splits.test["input"][:10]).argmax(1).tolist()
    assert predicted.prediction.tolist() == expected


def write_wrong_shape(folder):
    torch.save({"input": torch.zeros(3, 5)}, folder / "x.pt")
    return folder / "x.pt"


def write_table(folder):
    (folder / "x.csv").write_text("a,b\n1,2\n")
    return folder / "x.csv"


@pytest.mark.parametrize(
    "make, named",
    [
        (write_wrong_shape, "shape (5,)"),
        (write_table, "is a table, but this run was trained on --dataset folder"),
        (lambda folder: folder / "nothing.png", "does not exist"),
    ],
    ids=["wrong-shape", "table-for-images", "missing"],
)
def test_bad_inputs_exit_2_with_one_message(folder_run, predict, capsys, make, named):
    run_dir, root = folder_run
    assert predict(str(run_dir), str(make(root.parent)), "--device", "cpu") == 2
    err = flat(capsys.readouterr().err)
    assert named in err and "Traceback" not in err
