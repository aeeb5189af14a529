"""The command line: --help without torch, selectors, and one clear message per mistake."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, TINY
from toolbox.config.training import SLOTS, TrainingConfig
from toolbox.metrics import METRICS


def help_text(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "train.py", *argv, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "exit_code"), [(["--help"], 0), (["--epochs", "0"], 2)], ids=["help", "bad-option"]
)
def test_help_and_option_errors_do_not_import_torch(argv, exit_code):
    script = textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = ["train.py", *{argv!r}]
        try:
            runpy.run_path("train.py", run_name="__main__")
        except SystemExit as exit:
            assert exit.code == {exit_code}, exit.code
        print("torch imported:", "torch" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout


@pytest.mark.slow
def choices_shown(text: str, selector: str) -> str:
    """The ``--selector {a,b,...}`` choices as --help shows them, wrapped onto the next lines
    of the same box column (help is drawn in side-by-side boxes)."""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        cells = line.split("\u2502")
        for column, cell in enumerate(cells):
            if f"--{selector} {{" in cell:
                shown = cell.strip()
                for later in lines[number + 1 :]:
                    if "}" in shown:
                        break
                    later_cells = later.split("\u2502")
                    shown += later_cells[column].strip() if column < len(later_cells) else ""
                return shown
    raise AssertionError(f"--{selector} {{...}} is not in --help")


def test_help_lists_every_selector_choice_and_the_component_groups():
    text = help_text()
    for selector, registry in SLOTS.values():
        shown = choices_shown(text, selector)
        assert all(name in shown for name in registry.names()), shown
    assert all(name in text for name in METRICS.names())
    for option in (
        "--model.hidden-sizes",
        "--data.val-fraction",
        "--optim.lr",
        "--sched.final-fraction",
        "--loss.label-smoothing",
        "--epochs",
        "--batch-size",
        "--precision",
        "--resume",
        "--monitor",
    ):
        assert option in text


@pytest.mark.slow
def test_help_for_another_arch_shows_its_options_instead():
    text = help_text("--arch", "resnet18", "--dataset", "cifar10", "--optimizer", "sgd")
    assert "--model.stem" in text and "--model.hidden-sizes" not in text
    assert "--data.root" in text and "--optim.momentum" in text
    assert "ResNet-18" in text


def _documented_fields(cls: type) -> set[str]:
    """Field names that carry a docstring line below them, in cls and its bases."""
    names = set()
    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass) or klass.__module__ == "builtins":
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for statement, following in zip(body, body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
                and following.value.value.strip()
            ):
                names.add(statement.target.id)
    return names


@pytest.mark.parametrize(
    "cls",
    [TrainingConfig]
    + [registry.get(name) for _, registry in SLOTS.values() for name in registry.names()],
    ids=lambda cls: cls.__name__,
)
def test_every_option_has_help(cls):
    slot_fields = set(SLOTS)  # groups, described by the chosen component's class docstring
    fields = {f.name for f in dataclasses.fields(cls) if f.init} - slot_fields
    undocumented = fields - _documented_fields(cls)
    assert not undocumented, f"{cls.__name__} fields without a docstring: {undocumented}"
    assert cls.__doc__ and cls.__doc__.strip()


def _error_of(capsys, train, *argv) -> str:
    assert train(*argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--arch", "resnet81"], ["--arch", "resnet81", "resnet18", "vit_tiny"]),
        (["--dataset", "imagenet"], ["--dataset", "imagenet", "cifar10"]),
        (["--optimizer", "lion"], ["--optimizer", "adamw"]),
        (["--batch-size", "0"], ["--batch-size", "0"]),
        (["--epochs", "-1"], ["--epochs", "-1"]),
        (["--data.val-fraction", "1.5"], ["--data.val-fraction", "1.5"]),
        (["--device", "gpu"], ["--device", "gpu", "cuda:N"]),
        (["--criterion", "mse"], ["--criterion mse", "classification", "cross_entropy"]),
        (["--metrics", "accuracy", "rmse"], ["--metrics rmse", "accuracy"]),
        (["--monitor", "val_top5"], ["--monitor", "val_top5", "val_accuracy"]),
        (
            ["--resume", "no/such/checkpoint.pth.tar"],
            ["no/such/checkpoint.pth.tar", "does not exist"],
        ),
        (["--optim.lr", "0", "--model.dropout", "2"], ["--optim.lr", "--model.dropout"]),
        (["--arch"], ["--arch", "expected one argument"]),
    ],
)
def test_mistakes_get_one_clear_message(capsys, train, argv, expected):
    message = _error_of(capsys, train, *argv)
    for fragment in expected:
        assert fragment in message, message


def test_unavailable_cuda_device_is_refused(capsys, train):
    import torch

    if torch.cuda.is_available():
        message = _error_of(capsys, train, *TINY, "--device", "cuda:99")
        assert "cuda:99" in message
    else:
        message = _error_of(capsys, train, *TINY, "--device", "cuda")
        assert "no usable CUDA device" in message and "--device cpu" in message


@pytest.mark.parametrize("argv", [["--epochs", "two"], ["--no-such-flag"]])
def test_tyro_rejects_wrong_types_and_unknown_options(capsys, train, argv):
    with pytest.raises(SystemExit) as exit:
        train(*argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and argv[0] in err


def test_resume_of_a_file_that_is_not_a_checkpoint(capsys, train, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a checkpoint")
    message = _error_of(capsys, train, "--resume", str(text_file))
    assert str(text_file) in message and "not a loadable checkpoint" in message
    message = _error_of(capsys, train, "--resume", str(tmp_path))
    assert "is a directory" in message


def test_unwritable_output_dir_is_reported(capsys, train, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    message = _error_of(capsys, train, *TINY, "--output-dir", str(blocker / "runs"))
    assert "--output-dir" in message and str(blocker / "runs") in message


def test_test_py_mistakes(capsys, evaluate, tmp_path):
    assert evaluate(str(tmp_path / "missing")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert evaluate(str(tmp_path)) == 2
    assert "has no model_best.pth.tar" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        evaluate(str(tmp_path), "--split", "train")
    assert exit.value.code == 2


# --- What --help and `runs` load ------------------------------------------------------------


def modules_loaded(argv: list[str], cwd) -> dict[str, bool]:
    """Which of torch, typeguard and rich a fresh interpreter holds after ``argv``."""
    script = textwrap.dedent(
        f"""
        import contextlib, io, runpy, sys
        sys.argv = {argv!r}
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                if sys.argv[0] == "-m":
                    sys.argv = sys.argv[1:]
                    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        print(",".join(m for m in ("torch", "typeguard", "rich") if m in sys.modules))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this tree's toolbox, whatever the cwd
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.strip().split(","))
    return {name: name in loaded for name in ("torch", "typeguard", "rich")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--arch", "resnet18", "--dataset", "cifar10", "--help"],
        ["--arch", "ddpm", "--dataset", "mnist", "--help"],
        ["--arch", "trajectory_recovery", "--dataset", "trajectories", "--help"],
    ],
    ids=["default", "resnet18", "ddpm", "trajectory"],
)
def test_help_loads_neither_typeguard_nor_rich(argv):
    """Importing them took about 90 ms of train.py --help, a bare tyro CLI's whole time
    (benchmarks/help_time.py); tyro's default checks run without typeguard here."""
    assert modules_loaded([str(REPO / "train.py"), *argv], REPO) == {
        "torch": False,
        "typeguard": False,
        "rich": False,
    }


@pytest.fixture
def runs_dir(tmp_path):
    """Two runs as `runs` reads them: run.json and config.json, no checkpoint."""
    from toolbox.config.plain import to_plain

    for name, arch in (("first", "mlp"), ("second", "cnn")):
        run_dir = tmp_path / "outputs" / name
        run_dir.mkdir(parents=True)
        record = {"run_id": name, "status": "completed", "arch": arch, "dataset": "digits"}
        (run_dir / "run.json").write_text(json.dumps({**record, "epochs": 2, "epochs_done": 2}))
        config = to_plain(TrainingConfig(arch=arch))
        (run_dir / "config.json").write_text(json.dumps(config, default=str))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "--help"],
        ["runs", "diff", "outputs/first", "outputs/second"],
        ["runs"],
        ["runs", "show", "outputs/first"],
    ],
    ids=["help", "diff", "list", "show"],
)
def test_runs_loads_no_torch(runs_dir, argv):
    """`python -m toolbox runs` reads JSON files: torch (seconds to import) is only for
    reading a checkpoint (`runs which`)."""
    assert not modules_loaded(["-m", "toolbox", *argv], runs_dir)["torch"]


def test_tyro_default_checks_answer_as_typeguard_for_every_option():
    """Every field default of the config and of every component: the check without typeguard
    says it matches, and typeguard agrees; wrong values are left to tyro's own check."""
    import typing

    import typeguard

    from toolbox.cli import default_checks

    default_checks.install()
    classes = [TrainingConfig] + [
        registry.get(name) for _, registry in SLOTS.values() for name in registry.names()
    ]
    for cls in classes:
        hints = typing.get_type_hints(cls, include_extras=True)
        for field in dataclasses.fields(cls):
            if field.name in SLOTS:
                continue
            default = (
                field.default_factory() if field.default is dataclasses.MISSING else field.default
            )
            assert default_checks._matches(hints[field.name], default), (cls, field.name)
            typeguard.check_type(default, hints[field.name])
    wrong = [
        (tuple[int, ...], (1, "a")),
        (tuple[int, ...], [1, 2]),
        (tuple[int, int], (1,)),
        (tuple[float, float] | None, (1.0, "x")),
        (int | None, "3"),
        (list[int], [1]),  # not ours to judge: typeguard's
    ]
    for hint, value in wrong:
        assert not default_checks._matches(hint, value), hint
