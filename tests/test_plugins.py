"""--plugins and the toolbox.plugins entry points: components from the user's own code, known
to train.py, --resume, test.py and --config without a script of their own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO
from toolbox import plugins as plugins_module
from toolbox.models import MODELS

FAST = ["--dataset", "digits", "--epochs", "1", "--device", "cpu", "--batch-size", "64"]

PLUGIN = '''
from dataclasses import dataclass

from toolbox.models import ModelConfig, register_model


@register_model("{name}")
@dataclass(frozen=True)
class Linear(ModelConfig):
    """One linear layer over the flattened input."""

    scale: float = 1.0

    def build(self, info):
        import math

        import torch

        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(math.prod(info.input_shape), info.num_outputs)
        )
'''


def write_plugin(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLUGIN.format(name=name))
    return path


def forget(name: str, *modules: str) -> None:
    """As a new process would be: the component and its module not imported yet."""
    MODELS._entries.pop(name, None)
    for module in [m for m in sys.modules if m in modules or m.startswith("toolbox_plugin_")]:
        del sys.modules[module]


def test_a_plugin_file_trains_resumes_and_is_recorded(train, tmp_path, monkeypatch):
    plugin = write_plugin(tmp_path / "project" / "my_models.py", "file_linear")
    monkeypatch.chdir(tmp_path / "project")
    try:
        argv = ["--plugins", "my_models.py", "--arch", "file_linear", *FAST, "--epochs", "2"]
        assert train(*argv, "--run-name", "p") == 0
        run_dir = tmp_path / "outputs" / "p"
        assert json.loads((run_dir / "config.json").read_text())["plugins"] == [str(plugin)]
        forget("file_linear")
        monkeypatch.chdir(tmp_path)  # recorded by its absolute path: found from elsewhere too
        assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "3") == 0
        assert "file_linear" in MODELS.names()
        forget("file_linear")
        second = ["--config", str(run_dir / "config.json"), "--run-name", "again"]
        assert train(*second) == 0
    finally:
        forget("file_linear")


def test_a_plugin_module_is_imported_by_name(train, tmp_path, monkeypatch):
    write_plugin(tmp_path / "lib" / "my_project" / "models.py", "module_linear")
    (tmp_path / "lib" / "my_project" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    try:
        argv = ["--plugins", "my_project.models", "--arch", "module_linear", *FAST]
        assert train(*argv, "--run-name", "m") == 0
        config = json.loads((tmp_path / "outputs" / "m" / "config.json").read_text())
        assert config["plugins"] == ["my_project.models"] and config["arch"] == "module_linear"
    finally:
        forget("module_linear", "my_project", "my_project.models")


@pytest.mark.slow
def test_test_py_in_a_new_process_imports_the_runs_plugins(tmp_path):
    """What a user does: train with a plugin, then evaluate it with plain test.py."""
    plugin = write_plugin(tmp_path / "my_models.py", "process_linear")
    out = str(tmp_path / "outputs")
    steps = [
        ["train.py", "--plugins", str(plugin), "--arch", "process_linear", *FAST],
        ["train.py", "--output-dir", out, "--run-name", "r"],
        ["test.py", str(tmp_path / "outputs" / "r"), "--device", "cpu"],
    ]
    train_cmd = [*steps[0], *steps[1][1:]]
    for command in (train_cmd, steps[2]):
        result = subprocess.run(
            [sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "outputs" / "r" / "test" / "test_metrics.csv").is_file()


def test_an_installed_package_registers_its_components_with_no_flag(train, tmp_path, monkeypatch):
    site = tmp_path / "site"
    write_plugin(site / "lab_models.py", "installed_linear")
    dist_info = site / "lab_models-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-models\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[toolbox.plugins]\nlab = lab_models\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins_module, "_installed_loaded", False)
    monkeypatch.setattr(MODELS, "_imported", False)
    try:
        assert "installed_linear" in MODELS.names()
        assert train("--arch", "installed_linear", *FAST) == 0
    finally:
        forget("installed_linear", "lab_models")


@pytest.mark.parametrize(
    "source, named",
    [
        ("raise RuntimeError('no GPU driver here')\n", "RuntimeError: no GPU driver here"),
        ("import not_a_module_anywhere\n", "ModuleNotFoundError"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_a_plugin_that_fails_to_import_exits_2_naming_it(train, tmp_path, capsys, source, named):
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text(source)
    assert train("--plugins", str(plugin), *FAST) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--plugins {plugin}" in err and named in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()


def test_a_missing_plugin_exits_2(train, tmp_path, capsys):
    assert train("--plugins", "no_such_project.models", *FAST) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no_such_project.models" in err and "ModuleNotFoundError" in err


def test_the_example_scripts_are_plugins_too(train, tmp_path):
    """A script written for script_main registers its components when imported."""
    example = REPO / "examples" / "01_custom_model.py"
    try:
        assert train("--plugins", str(example), "--arch", "res_mlp", *FAST) == 0
    finally:
        forget("res_mlp")


def test_plugins_in_a_config_file_are_imported_before_its_names_are_read(train, tmp_path):
    plugin = write_plugin(tmp_path / "mine.py", "config_linear")
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(f"""\
            plugins: [{plugin}]
            arch: config_linear
            model: {{scale: 2.0}}
            dataset: digits
            epochs: 1
            device: cpu
        """)
    )
    try:
        assert train("--config", str(config), "--run-name", "c") == 0
        saved = json.loads((tmp_path / "outputs" / "c" / "config.json").read_text())
        assert saved["model"]["scale"] == 2.0 and saved["plugins"] == [str(plugin)]
    finally:
        forget("config_linear")
