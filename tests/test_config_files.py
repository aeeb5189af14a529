"""--config FILE (JSON, YAML), --print-config and --preset: configs in and out of train.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, TINY
from toolbox.cli.parse import parse_training_config
from toolbox.config.plain import to_plain
from toolbox.config.presets import PRESETS
from toolbox.config.training import TrainingConfig


def flat(text: str) -> str:
    return " ".join(text.split())


def printed(capsys, *argv: str, fmt: str = "json") -> dict:
    """The config ``train.py ARGV --print-config FMT`` prints, parsed back."""
    with pytest.raises(SystemExit) as exited:
        parse_training_config([*argv, "--print-config", fmt])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    return json.loads(out) if fmt == "json" else yaml.safe_load(out)


def test_print_config_prints_the_resolved_config_and_creates_nothing(tmp_path):
    """As a user runs it: exit 0, JSON on stdout, no run directory, no torch imported."""
    code = (
        "import sys; from toolbox.cli.main import run_cli, train_main; "
        "code = run_cli(train_main, sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    argv = ["--arch", "cnn", "--optim.lr", "0.02", "--output-dir", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv, "--print-config"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["arch"] == "cnn" and config["optim"]["lr"] == 0.02
    assert config["model"]["channels"] == [32, 64]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt, suffix", [("json", ".json"), ("yaml", ".yaml")])
def test_print_config_output_is_read_back_unchanged(capsys, tmp_path, fmt, suffix):
    argv = ["--arch", "cnn", "--dataset", "synthetic", "--scheduler", "warmup_cosine"]
    argv += ["--sched.warmup-epochs", "1"]
    argv += ["--metrics", "accuracy", "top5", "--save-at", "2", "3", "--clip-grad", "1e-5"]
    first = printed(capsys, *argv, fmt=fmt)
    path = tmp_path / f"printed{suffix}"
    path.write_text(json.dumps(first) if fmt == "json" else yaml.safe_dump(first))
    assert printed(capsys, "--config", str(path), fmt=fmt) == first
    config = parse_training_config(["--config", str(path)])
    assert config == parse_training_config(argv)


def test_later_files_override_earlier_ones_and_flags_override_files(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("epochs: 7\nbatch_size: 16\noptim:\n  lr: 1e-3\n  weight_decay: 0.5\n")
    override = tmp_path / "override.json"
    override.write_text(json.dumps({"batch_size": 8, "optim": {"lr": 0.2}}))
    config = parse_training_config(
        ["--config", str(base), "--config", str(override), "--epochs", "3"]
    )
    assert (config.epochs, config.batch_size) == (3, 8)
    assert (config.optim.lr, config.optim.weight_decay) == (0.2, 0.5)  # merged per key


def test_a_file_that_changes_a_component_starts_it_from_its_defaults(tmp_path):
    path = tmp_path / "cnn.json"
    path.write_text(json.dumps({"arch": "cnn", "model": {"hidden_size": 32}}))
    config = parse_training_config(["--config", str(path)])
    assert config.arch == "cnn" and config.model.hidden_size == 32
    assert config.model.channels == (32, 64)  # a CNN default, not an MLP leftover


def test_a_runs_config_json_starts_a_new_run_like_it(train, tmp_path):
    assert train(*TINY, "--optim.lr", "0.01", "--run-name", "first") == 0
    first = tmp_path / "outputs" / "first"
    saved = json.loads((first / "config.json").read_text())
    assert train("--config", str(first / "config.json"), "--run-name", "second") == 0
    again = json.loads((tmp_path / "outputs" / "second" / "config.json").read_text())
    assert {**again, "run_name": "first"} == saved
    runs = [tmp_path / "outputs" / run for run in ("first", "second")]
    metrics = [(run / "metrics.csv").read_text() for run in runs]
    rows = [[line.split(",")[:-1] for line in text.splitlines()] for text in metrics]
    assert rows[0] == rows[1]  # the same training, seed and all (elapsed_s aside)


def test_a_resumed_runs_config_json_starts_a_new_run_too(tmp_path):
    path = tmp_path / "config.json"
    plain = to_plain(TrainingConfig())
    path.write_text(json.dumps({**plain, "resume": str(tmp_path / "checkpoint.pth.tar")}))
    assert parse_training_config(["--config", str(path)]).resume is None


@pytest.mark.parametrize(
    "content, suffix, named",
    [
        ('{"epochs": 5, "optim": {"lrr": 0.1}}', ".json", ["optim", "lrr", "lr"]),
        ('{"epochs": "five"}', ".json", ["epochs", "'five'", "int"]),
        ('{"epoch": 5}', ".json", ["epoch", "epochs"]),
        ('{"arch": "resnet9"}', ".json", ["resnet9", "resnet18"]),
        ('{"optim": 0.1}', ".json", ["optim", "mapping"]),
        ('{"epochs": 5,}', ".json", ["not valid JSON", "line 1"]),
        ("epochs: [5\n", ".yaml", ["not valid YAML"]),
        ("[1, 2]", ".json", ["list", "mapping"]),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "unknown-top-key",
        "unknown-arch",
        "not-a-group",
        "bad-json",
        "bad-yaml",
        "not-a-mapping",
    ],
)
def test_bad_config_files_exit_2_naming_the_file_and_the_key(
    train, tmp_path, capsys, content, suffix, named
):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    assert train("--config", str(path)) == 2
    err = flat(capsys.readouterr().err)
    assert str(path) in err and "Traceback" not in err
    for word in named:
        assert word in err
    assert not (tmp_path / "outputs").exists()


def test_a_bad_value_from_a_file_is_refused_before_anything_starts(train, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{"epochs": 0}')
    assert train("--config", str(path)) == 2
    assert "--epochs is 0" in flat(capsys.readouterr().err)
    assert not (tmp_path / "outputs").exists()


def test_a_missing_config_file_exits_2(train, tmp_path, capsys):
    assert train("--config", str(tmp_path / "nowhere.yaml")) == 2
    assert "nowhere.yaml cannot be read" in flat(capsys.readouterr().err)


def test_config_and_resume_exclude_each_other(train, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text("{}")
    assert train("--config", str(path), "--resume", str(tmp_path / "checkpoint.pth.tar")) == 2
    assert "--resume continues a run" in flat(capsys.readouterr().err)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_valid_config_and_flags_override_it(name, capsys):
    from toolbox.config.checks import problems

    preset = PRESETS[name]()
    assert problems(preset) == []
    config = parse_training_config(["--preset", name, "--epochs", "2"])
    assert config == TrainingConfig(**{**vars(preset), "epochs": 2})
    assert printed(capsys, "--preset", name)["arch"] == preset.arch


def test_the_presets_are_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        parse_training_config(["--help"])
    out = flat(capsys.readouterr().out)
    assert "--preset NAME" in out and "--config FILE" in out and "--print-config" in out
    for name in PRESETS:
        assert name in out


def test_an_unknown_preset_lists_the_presets(train, capsys):
    assert train("--preset", "mnist_resnet") == 2
    err = flat(capsys.readouterr().err)
    assert "'mnist_resnet'" in err and "mnist_cnn" in err
