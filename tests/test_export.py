"""python -m toolbox export: the exported files take raw inputs, match torch on any batch
size, say what they are in model.json, and every mistake is one message with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_main
from tests.test_dataset_folder import write_images
from toolbox.cli.export import export_main
from toolbox.cli.main import train_main
from toolbox.training.inference import RawInputModel, load_trained_model

DIGITS = ["--dataset", "digits", "--epochs", "1", "--device", "cpu"]
TOLERANCE = 1e-4

# TorchScript is deprecated upstream, and the user asked for it.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated")


def export(*argv: str) -> int:
    return run_main(export_main, list(argv))


def onnx_outputs(path, inputs: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": inputs.numpy()})[0])


def torchscript_outputs(path, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.jit.load(str(path))(inputs)


def torch_outputs(run_dir, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_trained_model(run_dir)(inputs)


def split_inputs(run_dir) -> torch.Tensor:
    """The run's test split, as its dataset stores it (uint8 digits)."""
    return load_trained_model(run_dir).config.data.build().test["input"]


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def exported(request, tmp_path_factory):
    """A run on the digits (uint8 8x8 images) exported to every format."""
    outputs = tmp_path_factory.mktemp(request.param) / "outputs"
    argv = ["--arch", request.param, *DIGITS, "--output-dir", str(outputs), "--run-name", "r"]
    assert run_main(train_main, argv) == 0
    assert export(str(outputs / "r")) == 0
    return outputs / "r"


def test_onnx_and_torchscript_match_torch_on_raw_inputs_of_any_batch_size(exported):
    inputs = split_inputs(exported)
    assert inputs.dtype == torch.uint8
    for batch in (inputs[:7], inputs[:1], inputs):  # none of them the export's batch size
        expected = torch_outputs(exported, batch)
        for outputs in (
            onnx_outputs(exported / "export" / "model.onnx", batch),
            torchscript_outputs(exported / "export" / "model.torchscript.pt", batch),
        ):
            assert outputs.shape == expected.shape == (len(batch), 10)
            torch.testing.assert_close(outputs, expected, atol=TOLERANCE, rtol=0)


def test_model_json_says_what_the_model_takes_gives_and_where_it_came_from(exported):
    import toolbox

    manifest = json.loads((exported / "export" / "model.json").read_text())
    model = load_trained_model(exported)
    info = model.info
    state = torch.load(exported / "model_best.pth.tar", weights_only=True)
    assert manifest["run_id"] == state["run_id"] is not None
    assert manifest["toolbox_version"] == toolbox.__version__
    assert (manifest["arch"], manifest["task"]) == (model.config.arch, "classification")
    assert manifest["input"] == {
        "name": "input",
        "shape": ["batch", 1, 8, 8],
        "dtype": "uint8",
        "value_range": [0.0, 16.0],
    }
    assert manifest["output"]["shape"] == ["batch", 10]
    assert manifest["class_names"] == [str(digit) for digit in range(10)]
    assert manifest["normalisation"]["mean"] == list(info.mean)
    assert manifest["normalisation"]["std"] == list(info.std)
    assert manifest["check_inputs"] == "16 validation samples"
    formats = manifest["formats"]
    assert list(formats) == ["safetensors", "onnx", "torchscript"]
    for result in formats.values():
        assert (exported / "export" / result["file"]).is_file()
        assert result["checked_batch_sizes"] == [16, 1]
        assert 0 <= result["max_abs_diff"] <= TOLERANCE and result["matches"]


def test_safetensors_load_into_a_freshly_built_model_with_identical_outputs(exported):
    trained = load_trained_model(exported)
    fresh = RawInputModel(trained.config.model.build(trained.info), trained.info).eval()
    weights = load_file(exported / "export" / "model.safetensors")
    assert {"mean", "inv_std"} <= set(weights)  # the normalisation travels with the weights
    fresh.load_state_dict(weights, strict=True)
    inputs = split_inputs(exported)
    with torch.no_grad():
        assert torch.equal(fresh(inputs), trained(inputs))


def test_the_exported_model_predicts_the_classes_test_py_predicts(exported, evaluate):
    assert evaluate(str(exported), "--device", "cpu") == 0
    tested = pd.read_csv(exported / "test" / "test_predictions.csv")
    logits = onnx_outputs(exported / "export" / "model.onnx", split_inputs(exported))
    assert logits.argmax(1).tolist() == tested["prediction"].tolist()


def test_a_folder_of_png_images_exports_a_uint8_model_of_255_levels(train, tmp_path):
    """28 px images: cnn pools 14x14 maps to 4x4, windows neither ONNX exporter translates
    without the export's own decomposition."""
    root = tmp_path / "images"
    write_images(root, count=10, size=(28, 28), grey=True)
    argv = ["--arch", "cnn", "--dataset", "folder", "--data.root", str(root), "--run-name", "f"]
    assert train(*argv, "--batch-size", "8", "--epochs", "1", "--device", "cpu") == 0
    run_dir = tmp_path / "outputs" / "f"
    assert export(str(run_dir), "--format", "onnx", "torchscript", "--batch-size", "5") == 0
    manifest = json.loads((run_dir / "export" / "model.json").read_text())
    assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["value_range"] == [0, 255]
    assert manifest["input"]["shape"] == ["batch", 1, 28, 28]
    assert list(manifest["formats"]) == ["onnx", "torchscript"]
    assert not (run_dir / "export" / "model.safetensors").exists()
    batch = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    expected = torch_outputs(run_dir, batch)
    torch.testing.assert_close(onnx_outputs(run_dir / "export" / "model.onnx", batch), expected)
    outputs = torchscript_outputs(run_dir / "export" / "model.torchscript.pt", batch)
    torch.testing.assert_close(outputs, expected, atol=TOLERANCE, rtol=0)


def test_a_table_model_takes_float_features(train, tmp_path):
    argv = ["--dataset", "diabetes", "--criterion", "mse", "--metrics", "mae", "--run-name", "d"]
    assert train(*argv, "--epochs", "1", "--device", "cpu") == 0
    run_dir = tmp_path / "outputs" / "d"
    assert export(str(run_dir), "--format", "onnx", "--check-inputs", "random") == 0
    manifest = json.loads((run_dir / "export" / "model.json").read_text())
    assert manifest["input"]["dtype"] == "float32" and manifest["task"] == "regression"
    assert manifest["check_inputs"].startswith("16 samples of random normal values")
    features = load_trained_model(run_dir).config.data.build().test["input"][:5]
    outputs = onnx_outputs(run_dir / "export" / "model.onnx", features)
    torch.testing.assert_close(outputs, torch_outputs(run_dir, features), atol=TOLERANCE, rtol=0)


def test_the_weight_average_is_exported_unless_no_ema(train, tmp_path):
    argv = ["--arch", "mlp", *DIGITS, "--ema-decay", "0.9", "--run-name", "e"]
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "e"
    state = torch.load(run_dir / "model_best.pth.tar", weights_only=True)
    assert any(not torch.equal(state["ema"][key], state["model"][key]) for key in state["model"])
    for flag, weights, kind in (
        ("--ema", "ema", "moving average"),
        ("--no-ema", "model", "trained"),
    ):
        assert export(str(run_dir), "--format", "safetensors", flag) == 0
        exported = load_file(run_dir / "export" / "model.safetensors")
        for key, value in state[weights].items():
            assert torch.equal(exported[f"model.{key}"], value), key
        assert json.loads((run_dir / "export" / "model.json").read_text())["weights"] == kind


def test_adaptive_max_pool_decomposition_equals_torch_values_and_indices():
    from toolbox.training.export import _adaptive_max_pool2d

    for height, width, grid in [(14, 14, (4, 4)), (7, 9, (3, 4)), (8, 8, (4, 4)), (3, 7, (2, 1))]:
        for inputs in (
            torch.randn(2, 3, height, width),
            torch.randint(0, 3, (2, 3, height, width)).float(),  # ties: the first maximum
        ):
            expected = torch.nn.functional.adaptive_max_pool2d(inputs, grid, return_indices=True)
            values, indices = _adaptive_max_pool2d(inputs, list(grid))
            assert torch.equal(values, expected[0]) and torch.equal(indices, expected[1])


def test_random_check_inputs_have_the_dtype_the_dataset_stores():
    from toolbox.training.export import stored_dtype

    assert stored_dtype((0.0, 255.0)) == stored_dtype((0.0, 16.0)) == torch.uint8
    assert stored_dtype(None) == stored_dtype((0.0, 1.5)) == torch.float32


# --- Mistakes: one message, exit code 2, nothing written ----------------------------------


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """An mlp run on the digits, for exports that are refused before anything is written."""
    outputs = tmp_path_factory.mktemp("digits") / "outputs"
    argv = ["--arch", "mlp", *DIGITS, "--output-dir", str(outputs), "--run-name", "r"]
    assert run_main(train_main, argv) == 0
    return outputs / "r"


def files_in(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


def error_of(capsys, *argv: str) -> str:
    assert export(*argv) == 2
    return " ".join(capsys.readouterr().err.split())


def test_an_unknown_format_names_the_choices(capsys, digits_run):
    before = files_in(digits_run / "export")
    message = error_of(capsys, str(digits_run), "--format", "pdf")
    assert "invalid choice: 'pdf'" in message
    assert all(name in message for name in ("safetensors", "onnx", "torchscript"))
    assert files_in(digits_run / "export") == before


def test_a_run_that_is_not_a_run_directory_or_checkpoint_is_refused(capsys, tmp_path):
    assert "does not exist" in error_of(capsys, str(tmp_path / "missing"))
    assert "has no model_best.pth.tar" in error_of(capsys, str(tmp_path))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert "notes.txt" in error_of(capsys, str(tmp_path / "notes.txt"))


def test_a_check_batch_of_one_is_refused(capsys, digits_run):
    assert "--batch-size is 1; it must be at least 2" in error_of(
        capsys, str(digits_run), "--batch-size", "1"
    )


def test_a_missing_exporter_package_names_the_extra(capsys, digits_run, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnxscript" else find_spec(name)
    )
    before = files_in(digits_run / "export")
    message = error_of(capsys, str(digits_run), "--format", "torchscript", "onnx")
    assert "needs onnxscript" in message and "uv sync --extra export" in message
    assert files_in(digits_run / "export") == before


def test_a_model_with_its_own_steps_is_refused(capsys, train, tmp_path):
    argv = ["--arch", "trajectory_recovery", "--dataset", "trajectories", "--run-name", "t"]
    sizes = ["--data.num-train", "64", "--data.num-test", "16", "--batch-size", "16"]
    assert train(*argv, *sizes, "--epochs", "1", "--device", "cpu") == 0
    message = error_of(capsys, str(tmp_path / "outputs" / "t"))
    assert "trajectory_recovery trains with its own steps" in message
    assert not (tmp_path / "outputs" / "t" / "export").exists()


def test_an_exporter_failure_leaves_no_file(capsys, digits_run, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("no ONNX function for aten.made_up\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", fail)
    before = files_in(digits_run / "export")
    message = error_of(capsys, str(digits_run))
    assert "the ONNX exporter cannot export mlp: no ONNX function for aten.made_up;" in message
    # Not even the safetensors file, nor a temporary: every format is made before any is written.
    assert files_in(digits_run / "export") == before


def test_without_onnxruntime_the_onnx_file_is_written_and_its_check_skipped(
    capsys, digits_run, monkeypatch
):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: None if name == "onnxruntime" else find_spec(name),
    )
    assert export(str(digits_run), "--format", "onnx") == 0
    assert "check skipped: onnxruntime is not installed (uv sync --extra export)" in (
        capsys.readouterr().out
    )
    manifest = json.loads((digits_run / "export" / "model.json").read_text())
    assert manifest["formats"]["onnx"]["max_abs_diff"] is None
    monkeypatch.undo()
    inputs = split_inputs(digits_run)
    expected = torch_outputs(digits_run, inputs)
    outputs = onnx_outputs(digits_run / "export" / "model.onnx", inputs)
    np.testing.assert_allclose(outputs, expected, atol=TOLERANCE, rtol=0)


# --- The command line ---------------------------------------------------------------------


def test_python_m_toolbox_help_lists_runs_and_export():
    result = subprocess.run(
        [sys.executable, "-m", "toolbox", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "python -m toolbox runs" in result.stdout
    assert "python -m toolbox export RUN" in result.stdout


@pytest.mark.slow
def test_python_m_toolbox_export_end_to_end(digits_run):
    result = subprocess.run(
        [sys.executable, "-m", "toolbox", "export", str(digits_run), "--format", "torchscript"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "max |torchscript - torch| = 0" in result.stdout
    assert (digits_run / "export" / "model.torchscript.pt").is_file()
