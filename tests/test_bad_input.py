"""The catalogue of wrong invocations of train.py and test.py.

Every case must exit with code 2 (a user mistake), print no traceback, and print one message
that names the offending option or file and the bad value. Our own UserError messages are one
"error:" paragraph; tyro's parse errors (wrong types, unknown options, invalid choices) are one
box and leave through SystemExit(2).

The cases run in-process through the conftest fixtures, with a few through the real entry
points in subprocesses. Arguments may name the files that the module fixture ``files`` makes,
as ``{name}``: one real run of the TINY config, and damaged or foreign copies of its
checkpoint.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY, run_main

# A CUDA device this machine does not have: any on a CPU machine, an absurd index on a GPU one.
CUDA = "cuda:99" if torch.cuda.is_available() else "cuda"
NO_CUDA = "no usable CUDA device" if CUDA == "cuda" else "numbered from 0"


def case(*argv: str, expect: list[str], id: str):
    """One wrong invocation and the fragments its message must hold."""
    return pytest.param(list(argv), expect, id=id)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """One real run, and files a user might wrongly pass where a checkpoint belongs."""
    from toolbox.cli.main import train_main

    root = tmp_path_factory.mktemp("bad_input")
    outputs = root / "outputs"
    assert run_main(train_main, [*TINY, "--output-dir", str(outputs), "--run-name", "base"]) == 0
    run = outputs / "base"
    checkpoint = run / "checkpoint.pth.tar"

    data = checkpoint.read_bytes()
    (root / "truncated.pth.tar").write_bytes(data[: len(data) // 2])
    (root / "empty.pth.tar").write_bytes(b"")
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "hello.txt").write_text("hello\n")
    torch.save({"lr": 0.1, "epochs": 3}, root / "plain.pth")  # loads, but no toolbox marker
    torch.save({"format": "toolbox.checkpoint"}, root / "marker_only.pth")  # marker, no state

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["config"] = {**state["config"], "colour": "red"}
    torch.save(state, root / "unknown_key.pth.tar")
    state["config"] = {key: value for key, value in state["config"].items() if key != "colour"}
    state["config"]["arch"] = "no_such_arch"
    torch.save(state, root / "unknown_arch.pth.tar")

    (root / "blocker").write_text("")  # a regular file where a directory is expected
    (root / "not_a_run").mkdir()
    names = (
        "truncated.pth.tar empty.pth.tar notes.txt hello.txt plain.pth marker_only.pth "
        "unknown_key.pth.tar unknown_arch.pth.tar blocker not_a_run"
    ).split()
    paths = {name.split(".")[0]: root / name for name in names}
    paths.update(root=root, outputs=outputs, run=run, ckpt=checkpoint)
    return {name: str(path) for name, path in paths.items()}


def expand(values: list[str], files: dict[str, str]) -> list[str]:
    return [value.format(**files) for value in values]


def invoke(capsys, call, argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of one in-process call; an escaping exception is the traceback a
    user would see, so it fails the case."""
    capsys.readouterr()
    try:
        code = call(*argv)
    except SystemExit as exit:  # tyro's parse errors
        code = exit.code
    except Exception as error:  # any exception that escapes is a bug being tested
        pytest.fail(f"{argv} raised {type(error).__name__}: {error} (a traceback for the user)")
    return code, capsys.readouterr().err


def assert_one_clear_message(code: int, err: str, expect: list[str]) -> None:
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines, "no message on stderr"
    if err.lstrip().startswith("error:"):  # our UserError: one paragraph
        assert sum(line.startswith("error:") for line in lines) == 1, err
    else:  # tyro's box
        assert err.count("For full helptext") == 1, err
    message = " ".join(err.split())
    for fragment in expect:
        assert fragment in message, f"{fragment!r} not in: {message}"


# --- train.py ----------------------------------------------------------------------------

TRAIN_CASES = [
    # Unknown names: the selectors' own check, or tyro's choices.
    case("--arch", "resnet", expect=["--arch", "'resnet'", "resnet18"], id="unknown-arch"),
    case("--dataset", "imagenet", expect=["--dataset", "'imagenet'", "cifar10"], id="unknown-data"),
    case("--optimizer", "lion", expect=["--optimizer", "'lion'", "adamw"], id="unknown-optimizer"),
    case("--scheduler", "expo", expect=["--scheduler", "'expo'", "cosine"], id="unknown-sched"),
    case("--criterion", "hinge", expect=["--criterion", "'hinge'", "mse"], id="unknown-criterion"),
    case("--metrics", "f1", expect=["--metrics", "'f1'", "accuracy"], id="unknown-metric"),
    case("--precision", "fp8", expect=["--precision", "'fp8'", "bf16"], id="unknown-precision"),
    case("--nan-policy", "ignore", expect=["--nan-policy", "'ignore'"], id="unknown-nan-policy"),
    case("--model.activation", "foo", expect=["--model.activation", "'foo'"], id="unknown-act"),
    case("--no-such-flag", expect=["--no-such-flag"], id="unknown-flag"),
    case("--lr", "0.1", expect=["--lr", "--optim.lr"], id="unknown-flag-suggests"),
    # Missing values and wrong types.
    case("--arch", expect=["--arch", "expected one argument"], id="selector-without-value"),
    case("--epochs", expect=["--epochs", "Missing value"], id="option-without-value"),
    case("--epochs", "two", expect=["--epochs", "'two'"], id="epochs-not-int"),
    case("--optim.lr", "fast", expect=["--optim.lr", "'fast'"], id="lr-not-float"),
    case("--batch-size", "1.5", expect=["--batch-size", "'1.5'"], id="batch-size-not-int"),
    case("--data.val-fraction", "half", expect=["--data.val-fraction", "'half'"], id="frac-str"),
    # Zero and negative sizes and counts.
    case("--batch-size", "0", expect=["--batch-size is 0", "at least 1"], id="batch-size-0"),
    case("--eval-batch-size", "0", expect=["--eval-batch-size is 0"], id="eval-batch-size-0"),
    case("--epochs", "0", expect=["--epochs is 0"], id="epochs-0"),
    case("--grad-accum", "0", expect=["--grad-accum is 0"], id="grad-accum-0"),
    case("--eval-every", "0", expect=["--eval-every is 0"], id="eval-every-0"),
    case("--log-every", "0", expect=["--log-every is 0"], id="log-every-0"),
    case("--num-workers", "-1", expect=["--num-workers is -1", "0 or more"], id="num-workers"),
    case("--checkpoint-every-steps", "-1", expect=["--checkpoint-every-steps is -1"], id="ckpt"),
    case("--keep-last", "-1", expect=["--keep-last is -1"], id="keep-last-neg"),
    case("--save-at", "0", "3", expect=["--save-at is 0 3", "count from 1"], id="save-at-0"),
    case("--max-nan-skips", "-1", expect=["--max-nan-skips is -1"], id="max-nan-skips-neg"),
    case(
        "--dataset",
        "synthetic",
        "--data.num-train",
        "0",
        expect=["--data.num-train is 0"],
        id="synthetic-num-train-0",
    ),
    case(
        "--dataset",
        "synthetic",
        "--data.input-shape",
        "0",
        "8",
        expect=["--data.input-shape is [0, 8]"],
        id="synthetic-input-shape-0",
    ),
    case(
        "--dataset",
        "synthetic",
        "--data.num-classes",
        "0",
        expect=["--data.num-classes is 0"],
        id="synthetic-num-classes-0",
    ),
    case("--model.hidden-sizes", "0", expect=["--model.hidden-sizes is [0]"], id="hidden-0"),
    case(
        "--arch",
        "cnn",
        "--model.channels",
        "0",
        "8",
        expect=["--model.channels is [0, 8]"],
        id="cnn-channels-0",
    ),
    case(
        "--arch",
        "vit_tiny",
        "--model.num-heads",
        "5",
        expect=["--model.embed-dim 192", "--model.num-heads 5"],
        id="vit-heads-not-divisor",
    ),
    case(
        *TINY,
        "--batch-size",
        "100000",
        expect=["--batch-size 100000", "larger than the training split"],
        id="batch-gt-split",
    ),
    # Impossible fractions and rates.
    case("--data.val-fraction", "1.0", expect=["--data.val-fraction is 1.0"], id="val-frac-1"),
    case("--data.val-fraction", "-0.1", expect=["--data.val-fraction is -0.1"], id="val-frac-n"),
    case(
        *TINY,
        "--data.val-fraction",
        "0",
        expect=["validation split", "empty", "--data.val-fraction"],
        id="val-frac-0-empty",
    ),
    case("--data.test-fraction", "1.5", expect=["--data.test-fraction is 1.5"], id="test-frac"),
    case("--model.dropout", "1", expect=["--model.dropout is 1.0", "[0, 1)"], id="dropout-1"),
    case("--loss.label-smoothing", "1.2", expect=["--loss.label-smoothing is 1.2"], id="smooth"),
    case(
        "--scheduler",
        "step",
        "--sched.gamma",
        "0",
        expect=["--sched.gamma is 0.0", "(0, 1]"],
        id="step-gamma-0",
    ),
    case(
        "--scheduler",
        "plateau",
        "--sched.factor",
        "1",
        expect=["--sched.factor is 1.0"],
        id="plateau-factor-1",
    ),
    case("--sched.final-fraction", "2", expect=["--sched.final-fraction is 2.0"], id="final-fr"),
    case(
        "--scheduler",
        "warmup_cosine",
        "--sched.warmup-epochs",
        "-1",
        expect=["--sched.warmup-epochs is -1"],
        id="warmup-neg",
    ),
    case(
        "--optimizer",
        "sgd",
        "--optim.momentum",
        "1",
        expect=["--optim.momentum is 1.0", "[0, 1)"],
        id="sgd-momentum-1",
    ),
    case(
        "--optimizer",
        "sgd",
        "--optim.nesterov",
        "--optim.momentum",
        "0",
        expect=["--optim.nesterov", "--optim.momentum"],
        id="nesterov-without-momentum",
    ),
    case("--optimizer", "adam", "--optim.beta1", "1", expect=["--optim.beta1 is 1.0"], id="b1"),
    case("--optim.lr", "0", expect=["--optim.lr is 0.0", "positive"], id="lr-0"),
    case("--optim.weight-decay", "-1", expect=["--optim.weight-decay is -1.0"], id="wd-neg"),
    case("--clip-grad", "0", expect=["--clip-grad is 0.0", "positive"], id="clip-grad-0"),
    case("--clip-grad", "-1", expect=["--clip-grad is -1.0"], id="clip-grad-neg"),
    # Numbers torch refuses only once training starts, or takes and misbehaves with: each is
    # refused up front, before a dataset is made or a model built.
    case(*TINY, "--optim.eps", "-1", expect=["--optim.eps is -1.0", "positive"], id="eps-neg"),
    case(*TINY, "--optim.eps", "nan", expect=["--optim.eps is nan", "positive"], id="eps-nan"),
    case(*TINY, "--optim.eps", "0", expect=["--optim.eps is 0.0", "positive"], id="eps-0"),
    case(*TINY, "--optim.lr", "inf", expect=["--optim.lr is inf", "finite"], id="lr-inf"),
    case(*TINY, "--optim.weight-decay", "inf", expect=["--optim.weight-decay is inf"], id="wd-inf"),
    case(
        *TINY,
        "--scheduler",
        "warmup_cosine",
        "--sched.warmup-epochs",
        "inf",
        expect=["--sched.warmup-epochs is inf", "finite"],
        id="warmup-inf",
    ),
    case(
        *TINY,
        "--scheduler",
        "plateau",
        "--sched.min-lr",
        "nan",
        expect=["--sched.min-lr is nan", "finite"],
        id="plateau-min-lr-nan",
    ),
    case(
        "--dataset",
        "synthetic",
        "--data.num-train",
        "4611686018427387904",  # 2**62
        expect=["--data.num-train 4611686018427387904", "GB", "memory available", "lower"],
        id="synthetic-num-train-2**62",
    ),
    case(
        *TINY,
        "--data.input-shape",
        "100000",
        "100000",
        expect=["--data.input-shape 100000 100000", "GB", "memory available", "lower"],
        id="synthetic-larger-than-memory",
    ),
    case(*TINY, "--data.noise", "inf", expect=["--data.noise is inf", "finite"], id="noise-inf"),
    case(
        *TINY,
        "--data.split-seed",
        "18446744073709551616",  # 2**64, past what torch.Generator.manual_seed takes
        expect=["--data.split-seed is 18446744073709551616", "[0, 2**63)"],
        id="split-seed-overflow",
    ),
    case(
        *TINY,
        "--arch",
        "vit_tiny",
        "--model.mlp-ratio",
        "nan",
        expect=["--model.mlp-ratio is nan"],
        id="vit-mlp-ratio-nan",
    ),
    case(*TINY, "--clip-grad", "inf", expect=["--clip-grad is inf", "None"], id="clip-grad-inf"),
    case(
        *TINY,
        "--callbacks",
        "early_stopping",
        "--callback.early-stopping.min-lr",
        "inf",
        expect=["--callback.early-stopping.min-lr is inf"],
        id="early-stop-inf",
    ),
    case(*TINY, "--dist-timeout", "inf", expect=["--dist-timeout is inf"], id="dist-timeout-inf"),
    # A sweep checks every combination before its first run: the valid eps trains nothing.
    case(
        *TINY,
        "--sweep",
        "optim.eps=1e-8,-1",
        expect=["--sweep optim.eps=1e-8,-1", "--optim.eps is -1.0"],
        id="sweep-with-one-bad-value",
    ),
    # Devices.
    case(*TINY, "--device", CUDA, expect=["--device", CUDA, NO_CUDA], id="device-unavailable"),
    case("--device", "tpu", expect=["--device is 'tpu'", "cuda:N"], id="device-tpu"),
    case("--device", "cuda:x", expect=["--device is 'cuda:x'"], id="device-cuda-x"),
    # Metrics, monitor and criterion that do not fit.
    case("--monitor", "val_top5", expect=["--monitor is 'val_top5'", "val_accuracy"], id="mon"),
    case("--monitor", "accuracy", expect=["--monitor is 'accuracy'"], id="monitor-no-prefix"),
    case(
        "--criterion",
        "mse",
        expect=["--criterion mse", "classification", "cross_entropy"],
        id="criterion-task",
    ),
    case("--metrics", "mae", expect=["--metrics mae", "classification"], id="metric-task"),
    case(
        "--dataset",
        "synthetic",
        "--data.task",
        "regression",
        expect=["--criterion cross_entropy", "regression", "mse"],
        id="regression-defaults",
    ),
    case("--metrics", "accuracy", "accuracy", expect=["--metrics accuracy", "twice"], id="dup"),
    # Run directory.
    case("--run-name", "a/b", expect=["--run-name is 'a/b'", "no '/'"], id="run-name-slash"),
    case("--run-name", "..", expect=["--run-name is '..'"], id="run-name-dotdot"),
    case(
        *TINY,
        "--output-dir",
        "{blocker}/runs",
        expect=["--output-dir {blocker}/runs", "Not a directory"],
        id="output-dir-under-file",
    ),
    case(
        *TINY,
        "--output-dir",
        "{blocker}",
        expect=["--output-dir {blocker}", "File exists"],
        id="output-dir-is-file",
    ),
    case(
        *TINY,
        "--output-dir",
        "{outputs}",
        "--run-name",
        "base",
        expect=["--run-name 'base'", "{run} already exists", "--resume"],
        id="run-name-taken",
    ),
    case(
        "--dataset",
        "mnist",
        "--data.root",
        "{root}/nodata",
        "--data.no-download",
        expect=["mnist files not found", "{root}/nodata/MNIST/raw", "--data.root"],
        id="data-root-missing",
    ),
    # Resume.
    case(
        "--resume",
        "{root}/no/such.pth.tar",
        expect=["{root}/no/such.pth.tar", "does not exist"],
        id="resume-missing",
    ),
    case("--resume", "{run}", expect=["{run} is a directory", "{ckpt}"], id="resume-directory"),
    case(
        "--resume",
        "{empty}",
        expect=["{empty} is not a loadable checkpoint"],
        id="resume-empty-file",
    ),
    case("--resume", "{notes}", expect=["{notes} is not a loadable"], id="resume-text-file"),
    case(
        "--resume",
        "{run}/config.json",
        expect=["{run}/config.json is not a loadable"],
        id="resume-config-json",
    ),
    case(
        "--resume",
        "{truncated}",
        expect=["{truncated} is not a loadable", "truncated"],
        id="resume-truncated",
    ),
    case(
        "--resume",
        "{plain}",
        expect=["{plain} is not a toolbox checkpoint"],
        id="resume-foreign-dict",
    ),
    case(
        "--resume",
        "{unknown_key}",
        expect=["{unknown_key}", "unknown keys ['colour']"],
        id="resume-config-unknown-key",
    ),
    case(
        "--resume",
        "{unknown_arch}",
        expect=["{unknown_arch}", "--arch", "'no_such_arch'"],
        id="resume-config-unknown-arch",
    ),
    case(
        "--resume",
        "{ckpt}",
        "--arch",
        "cnn",
        expect=["--resume {ckpt}", "--arch", "cannot change"],
        id="resume-arch-changed",
    ),
    case(
        "--resume",
        "{ckpt}",
        "--epochs",
        "4",
        "--seed",
        "3",
        expect=["--seed cannot change"],
        id="resume-seed-changed",
    ),
    case(
        "--resume",
        "{ckpt}",
        "--epochs",
        "4",
        "--model.hidden-sizes",
        "7",
        expect=["--model.hidden-sizes cannot change"],
        id="resume-model-option-changed",
    ),
    case(
        "--resume",
        "{ckpt}",
        "--epochs",
        "1",
        expect=["--resume {ckpt}", "already trained 2 of --epochs 1"],
        id="resume-epochs-done",
    ),
    case(
        "--resume",
        "{ckpt}",
        "--init-from",
        "{ckpt}",
        expect=["--init-from and --resume exclude each other"],
        id="resume-and-init-from",
    ),
    # Init from.
    case(
        *TINY,
        "--init-from",
        "{root}/missing.pth",
        expect=["--init-from {root}/missing.pth", "does not exist"],
        id="init-from-missing",
    ),
    case(
        *TINY,
        "--init-from",
        "{truncated}",
        expect=["--init-from {truncated}", "not a loadable"],
        id="init-from-truncated",
    ),
    case(
        *TINY,
        "--init-from",
        "{plain}",
        expect=["--init-from {plain}", "neither"],
        id="init-from-not-weights",
    ),
    # Options of a component that is not selected: the message names the selector to add.
    case("--model.stem", "small", expect=["--model.stem", "--arch resnet18"], id="stem-with-mlp"),
    case(
        "--optim.momentum",
        "0.9",
        expect=["--optim.momentum", "--optimizer sgd"],
        id="momentum-with-adamw",
    ),
    case("--data.root", "x", expect=["--data.root"], id="data-root-with-digits"),
    case("--data.num-train", "10", expect=["--data.num-train"], id="num-train-with-digits"),
    case(
        "--sched.gamma",
        "0.5",
        expect=["--sched.gamma", "--scheduler step"],
        id="gamma-with-cosine",
    ),
    case(
        "--criterion",
        "l1",
        "--loss.label-smoothing",
        "0.1",
        expect=["--loss.label-smoothing"],
        id="smoothing-with-l1",
    ),
    # Files that torch.load fails on in unusual ways, models that need images, NaN values.
    case(
        "--resume",
        "{run}/metrics.csv",
        expect=["{run}/metrics.csv is not a loadable"],
        id="resume-metrics-csv",
    ),
    case(
        "--resume",
        "{hello}",
        expect=["{hello} is not a loadable"],
        id="resume-text-file-hello",
    ),
    case(
        "--resume",
        "{marker_only}",
        expect=["{marker_only}"],
        id="resume-marker-without-state",
    ),
    case(
        *TINY,
        "--init-from",
        "{run}/metrics.csv",
        expect=["--init-from {run}/metrics.csv", "not a loadable"],
        id="init-from-metrics-csv",
    ),
    case(
        *TINY,
        "--init-from",
        "{marker_only}",
        expect=["--init-from {marker_only}"],
        id="init-from-marker-without-state",
    ),
    case(
        *TINY,
        "--init-from",
        "{run}",
        expect=["--init-from {run}", "directory"],
        id="init-from-directory",
    ),
    case(
        *TINY,
        "--arch",
        "cnn",
        "--data.input-shape",
        "16",
        expect=["--arch cnn", "--data.input-shape"],
        id="cnn-on-vectors",
    ),
    case(
        *TINY,
        "--arch",
        "vit_tiny",
        "--data.input-shape",
        "16",
        expect=["--arch vit_tiny", "--data.input-shape"],
        id="vit-on-vectors",
    ),
    case(
        *TINY,
        "--seed",
        "-1",
        expect=["--seed is -1"],
        id="seed-negative",
    ),
    case(
        *TINY,
        "--optim.lr",
        "nan",
        expect=["--optim.lr is nan"],
        id="lr-nan",
    ),
    case(
        *TINY,
        "--clip-grad",
        "nan",
        expect=["--clip-grad is nan"],
        id="clip-grad-nan",
    ),
    case(
        "--optim.momentum",
        "0.9",
        expect=["--optim.momentum", "--optimizer sgd"],
        id="foreign-option-names-its-owner",
    ),
]


@pytest.mark.parametrize(("argv", "expect"), TRAIN_CASES)
def test_train_py_mistake(capsys, train, files, tmp_path, argv, expect):
    code, err = invoke(capsys, train, expand(argv, files))
    assert_one_clear_message(code, err, expand(expect, files))
    # A mistake leaves no half-made run directory behind.
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.iterdir()), list(outputs.iterdir())


# --- test.py -----------------------------------------------------------------------------

TEST_CASES = [
    case("{root}/missing", expect=["{root}/missing does not exist"], id="missing-path"),
    case("{not_a_run}", expect=["{not_a_run} has no model_best.pth.tar"], id="not-a-run-dir"),
    case(
        "{not_a_run}",
        "--checkpoint",
        "last",
        expect=["{not_a_run} has no checkpoint.pth.tar"],
        id="not-a-run-dir-last",
    ),
    case(expect=["RUN_DIR_OR_CHECKPOINT"], id="no-run-given"),
    case("{run}", "--split", "train", expect=["--split", "'train'", "'val'"], id="split-train"),
    case("{run}", "--checkpoint", "middle", expect=["--checkpoint", "'middle'"], id="ckpt-name"),
    case("{run}", "--batch-size", "0", expect=["--batch-size is 0", "at least 1"], id="batch-0"),
    case("{run}", "--batch-size", "many", expect=["--batch-size", "'many'"], id="batch-not-int"),
    case("{run}", "--device", CUDA, expect=["--device", CUDA, NO_CUDA], id="device-unavailable"),
    case("{run}", "--device", "tpu", expect=["--device is 'tpu'"], id="device-tpu"),
    case("{run}", "--epochs", "3", expect=["--epochs"], id="train-option"),
    case(
        "{run}",
        "--model.hidden-sizes",
        "8",
        expect=["--model.hidden-sizes", "cannot change the run's model", "(--model.weights)"],
        id="weight-changing-model-option",
    ),
    case("{run}", "--model.colour", "red", expect=["--model.colour"], id="unknown-model-option"),
    case("{truncated}", expect=["{truncated} is not a loadable", "truncated"], id="truncated"),
    case("{empty}", expect=["{empty} is not a loadable"], id="empty-file"),
    case("{notes}", expect=["{notes} is not a loadable"], id="text-file"),
    case("{run}/config.json", expect=["{run}/config.json is not a loadable"], id="config-json"),
    case("{plain}", expect=["{plain} is not a toolbox checkpoint"], id="foreign-dict"),
    case("{unknown_key}", expect=["{unknown_key}", "unknown keys ['colour']"], id="unknown-key"),
    case("{unknown_arch}", expect=["{unknown_arch}", "'no_such_arch'"], id="unknown-arch"),
    case(
        "{run}/metrics.csv",
        expect=["{run}/metrics.csv is not a loadable"],
        id="metrics-csv",
    ),
    case(
        "{marker_only}",
        expect=["{marker_only}"],
        id="marker-without-state",
    ),
]


@pytest.mark.parametrize(("argv", "expect"), TEST_CASES)
def test_test_py_mistake(capsys, evaluate, files, argv, expect):
    code, err = invoke(capsys, evaluate, expand(argv, files))
    assert_one_clear_message(code, err, expand(expect, files))
    assert not (Path(files["run"]) / "test").exists()  # nothing written for a mistake


def test_the_catalogue_is_complete():
    assert len(TRAIN_CASES + TEST_CASES) >= 35
    assert len({param.id for param in TRAIN_CASES}) == len(TRAIN_CASES)
    assert len({param.id for param in TEST_CASES}) == len(TEST_CASES)


# --- the real entry points -----------------------------------------------------------------

SUBPROCESS_CASES = [
    pytest.param(
        "train.py", ["--optimizer", "lion"], ["--optimizer", "'lion'"], id="train-unknown-name"
    ),
    pytest.param("train.py", ["--epochs", "two"], ["--epochs", "'two'"], id="train-wrong-type"),
    pytest.param(
        "train.py",
        ["--batch-size", "0", "--clip-grad", "0"],
        ["--batch-size is 0", "--clip-grad is 0.0"],
        id="train-two-problems",
    ),
    pytest.param(
        "train.py",
        ["--resume", "{truncated}"],
        ["{truncated} is not a loadable checkpoint"],
        id="train-resume-truncated",
    ),
    pytest.param(
        "test.py", ["{run}", "--batch-size", "0"], ["--batch-size is 0"], id="test-batch-size-0"
    ),
]


def words(text: str) -> str:
    """``text`` without rich's box drawing (unicode in a subprocess, ASCII under capsys)."""
    return " ".join(re.sub(r"[╭╮╰╯│─]+|-{3,}", " ", text).split())


@pytest.mark.slow
@pytest.mark.parametrize(("script", "argv", "expect"), SUBPROCESS_CASES)
def test_entry_points_exit_like_the_in_process_calls(
    capsys, train, evaluate, files, script, argv, expect
):
    argv = expand(argv, files)
    result = subprocess.run(
        [sys.executable, script, *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    code, err = invoke(capsys, train if script == "train.py" else evaluate, argv)
    assert result.returncode == code == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert words(result.stderr) == words(err)  # the same message, whatever box it is drawn in
    assert_one_clear_message(result.returncode, result.stderr, expand(expect, files))
