"""The tree is the architecture: layers as folders, lower layers never import higher ones, no
import cycle, no oversized module, and the command line and configs load without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "toolbox"

# Lowest first. A module may import its own layer and the ones below, never one above.
LAYERS = [
    {
        "toolbox",
        "toolbox.errors",
        "toolbox.registry",
        "toolbox.component",
        "toolbox.launch",
        "toolbox.plugins",
    },
    {"toolbox.nn", "toolbox.tasks", "toolbox.data"},
    {
        "toolbox.models",
        "toolbox.datasets",
        "toolbox.criteria",
        "toolbox.optimizers",
        "toolbox.schedulers",
        "toolbox.metrics",
        "toolbox.loggers",
        "toolbox.callbacks",
    },
    {"toolbox.config"},
    # TensorBoard's sink writes through the records' TensorBoard extras; the registry finds
    # it by name, and the config layer names no class of it.
    {"toolbox.records", "toolbox.loggers.tensorboard"},
    {"toolbox.training"},
    {"toolbox.cli", "toolbox.__main__", "toolbox.api"},
]
TOP_LEVEL_MODULES_MAX = 8
LINES_MAX = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for index in reversed(range(len(LAYERS))):
        for prefix in LAYERS[index]:
            if module == prefix or (prefix != "toolbox" and module.startswith(prefix + ".")):
                return index
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def imports_of(path: Path) -> set[str]:
    """The toolbox modules ``path`` imports anywhere, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from toolbox.records import checkpoint` imports the module toolbox.records.checkpoint
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found


GRAPH = {module: imports_of(path) - {module} for module, path in MODULES.items()}


def test_every_module_belongs_to_a_layer_and_imports_none_above_it():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {imported} (layer {layer_of(imported)})"
        for module, imported_modules in GRAPH.items()
        for imported in sorted(imported_modules)
        if layer_of(imported) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    state: dict[str, str] = {}  # "active" while on the current path, then "done"
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "active"
        for imported in sorted(GRAPH[module]):
            if state.get(imported) == "active":
                cycles.append(" -> ".join(path[path.index(imported) :] + [imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_top_level_is_small_and_no_module_is_oversized():
    top_level = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top_level) <= TOP_LEVEL_MODULES_MAX, top_level
    long = {
        str(path.relative_to(REPO)): count
        for path in MODULES.values()
        if (count := len(path.read_text().splitlines())) > LINES_MAX
    }
    assert not long, f"modules over {LINES_MAX} lines: {long}"


def test_components_with_torch_code_are_subpackages_not_private_siblings():
    """The registry scan skips ``_``-prefixed modules: code hidden there is code a newcomer
    does not find beside the component it belongs to."""
    private = sorted(
        str(path.relative_to(REPO))
        for registry in LAYERS[2]
        for path in (REPO / Path(*registry.split("."))).rglob("_*.py")
        if path.name != "__init__.py"
    )
    assert not private, private


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["toolbox.cli", "toolbox.config"])
def test_the_command_line_and_config_layers_import_no_torch(layer):
    modules = sorted(module for module in MODULES if module.startswith(layer))
    check = (
        f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
        "print(','.join(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "torch" not in result.stdout.strip().split(","), result.stdout
