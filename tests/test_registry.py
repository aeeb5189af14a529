"""Registries: one new file adds a component, mistakes in a registration are refused at once,
an unknown name gets the valid ones, and listing names never imports torch."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass

import pytest

from tests.conftest import REPO
from toolbox.component import Component
from toolbox.config.checks import validate
from toolbox.config.plain import from_plain, to_plain
from toolbox.config.training import SLOTS, TrainingConfig, with_components
from toolbox.errors import UserError
from toolbox.metrics import METRICS
from toolbox.models import MODELS, ModelConfig
from toolbox.registry import Registry

ALL_REGISTRIES = [registry for _, registry in SLOTS.values()] + [METRICS]

PACKAGE_INIT = """
from dataclasses import dataclass

from toolbox.component import Component
from toolbox.registry import Registry


@dataclass(frozen=True)
class Thing(Component):
    pass


THINGS = Registry("thing", __name__, Thing, "--thing")
"""


def thing_module(name: str, class_name: str, parent: str = ".") -> str:
    """A module registering ``name``; ``parent=".."`` for the ``__init__`` of a subpackage."""
    return f"""
from dataclasses import dataclass

from {parent} import THINGS, Thing


@THINGS.register({name!r})
@dataclass(frozen=True)
class {class_name}(Thing):
    size: int = 1
"""


@pytest.fixture
def make_package(tmp_path, monkeypatch):
    """Writes a package of component modules under tmp_path, importable by a unique name
    (a module named "sub/__init__" or "sub/network" goes into the subpackage sub); every
    module of it is dropped from sys.modules afterwards."""
    names = []

    def make(modules: dict[str, str]) -> str:
        name = f"registry_test_pkg_{uuid.uuid4().hex[:10]}"
        folder = tmp_path / "packages" / name
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(PACKAGE_INIT)
        for module, text in modules.items():
            path = folder / f"{module}.py"
            path.parent.mkdir(exist_ok=True)
            path.write_text(textwrap.dedent(text))
        monkeypatch.syspath_prepend(str(tmp_path / "packages"))
        names.append(name)
        return name

    yield make
    for module in list(sys.modules):
        if any(module == name or module.startswith(f"{name}.") for name in names):
            del sys.modules[module]


# --- Importing a package's modules ------------------------------------------------------------


@pytest.mark.parametrize(
    "first_use",
    [
        lambda registry: registry.names(),
        lambda registry: registry.get("alpha"),
        lambda registry: "alpha" in registry,
    ],
    ids=["names", "get", "contains"],
)
def test_first_use_imports_every_public_module_of_the_package(make_package, first_use):
    package = make_package(
        {
            "alpha": thing_module("alpha", "Alpha"),
            "beta": thing_module("beta", "Beta"),
            "_private": "raise RuntimeError('a private module was imported by the scan')\n",
        }
    )
    things = importlib.import_module(package).THINGS
    assert f"{package}.alpha" not in sys.modules  # nothing is imported before first use

    first_use(things)

    assert f"{package}.alpha" in sys.modules and f"{package}.beta" in sys.modules
    assert f"{package}._private" not in sys.modules
    assert things.names() == ["alpha", "beta"]
    alpha = things.get("alpha")
    assert alpha.__name__ == "Alpha" and alpha.registered_name == "alpha"
    assert things.name_of(alpha(size=3)) == "alpha"


def test_first_use_imports_each_public_subpackage_but_no_module_inside_it(make_package):
    inside = "raise RuntimeError('the scan imported a module inside a subpackage')\n"
    package = make_package(
        {
            "alpha": thing_module("alpha", "Alpha"),
            # A component with torch code: its config in __init__, its network beside it.
            "gamma/__init__": thing_module("gamma", "Gamma", parent=".."),
            "gamma/network": inside,
            "_hidden/__init__": "raise RuntimeError('a private subpackage was imported')\n",
        }
    )
    things = importlib.import_module(package).THINGS

    assert things.names() == ["alpha", "gamma"]
    assert things.get("gamma").__module__ == f"{package}.gamma"
    assert f"{package}.gamma.network" not in sys.modules
    assert f"{package}._hidden" not in sys.modules


def test_duplicate_name_is_refused_naming_both_classes(make_package):
    package = make_package(
        {"first": thing_module("same", "First"), "second": thing_module("same", "Second")}
    )
    things = importlib.import_module(package).THINGS
    with pytest.raises(ValueError, match="registered twice") as error:
        things.names()
    message = str(error.value)
    assert f"{package}.first.First" in message
    assert f"{package}.second.Second" in message
    assert "'same'" in message


def test_refused_registrations_leave_the_registry_unchanged(make_package):
    package = make_package({})
    module = importlib.import_module(package)
    things: Registry = module.THINGS

    @dataclass(frozen=True)
    class WrongBase(Component):
        pass

    with pytest.raises(TypeError, match="must subclass Thing"):
        things.register("wrong_base")(WrongBase)

    class NoDataclass(module.Thing):
        width: int = 3  # not a field: without the decorator this would silently not be one

    with pytest.raises(TypeError, match="frozen dataclass"):
        things.register("no_dataclass")(NoDataclass)

    assert things.names() == []
    assert "wrong_base" not in things and "no_dataclass" not in things


def test_non_frozen_dataclass_is_refused():
    class Base:
        pass

    registry = Registry("plain", "toolbox.models", Base, "--plain")

    @dataclass
    class Mutable(Base):
        value: int = 0

    with pytest.raises(TypeError, match="'mutable' must be a frozen dataclass"):
        registry.register("mutable")(Mutable)

    class NotADataclass(Base):
        pass

    with pytest.raises(TypeError, match="frozen dataclass"):
        registry.register("plain_class")(NotADataclass)


def test_undecorated_subclass_of_a_registered_model_is_refused():
    registry = Registry("model", "toolbox.models", ModelConfig, "--arch")

    class Forgotten(MODELS.get("mlp")):
        extra_width: int = 8

    assert "extra_width" not in {f.name for f in dataclasses.fields(Forgotten)}
    with pytest.raises(TypeError, match="Forgotten"):
        registry.register("forgotten")(Forgotten)


# --- Unknown names ---------------------------------------------------------------------------


def test_unknown_model_lists_valid_names_and_suggests_the_close_one():
    with pytest.raises(UserError) as error:
        MODELS.get("resnet81")
    message = str(error.value)
    assert message.startswith("--arch: unknown model 'resnet81'.")
    assert "Did you mean 'resnet18'?" in message
    for name in MODELS.names():
        assert name in message
    assert "resnet81" not in MODELS


@pytest.mark.parametrize("registry", ALL_REGISTRIES, ids=lambda r: r.kind)
def test_every_name_misspelt_gets_suggested(registry):
    for name in registry.names():
        typo = f"{name}x"
        with pytest.raises(UserError) as error:
            registry.get(typo)
        message = str(error.value)
        assert f"Did you mean {name!r}?" in message, message
        assert registry.option in message
        assert f"Choose one of: {', '.join(registry.names())}." in message


def test_unknown_name_far_from_every_name_gets_no_suggestion():
    with pytest.raises(UserError) as error:
        MODELS.get("zzzzzzzz")
    assert "Did you mean" not in str(error.value)
    assert all(name in str(error.value) for name in MODELS.names())


# --- One new file adds a component ------------------------------------------------------------

NEW_MODEL = '''
from dataclasses import dataclass

from toolbox.models import ModelConfig, register_model


@register_model("plugin_linear")
@dataclass(frozen=True)
class PluginLinear(ModelConfig):
    """One linear layer over the flattened input."""

    bias: bool = True
    """Learn an additive bias."""

    def build(self, info):
        import math

        from torch import nn

        width = math.prod(info.input_shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(width, info.num_outputs, bias=self.bias))
'''


NEW_MODEL_NETWORK = """
from torch import nn


def linear_model(width, num_outputs, bias):
    return nn.Sequential(nn.Flatten(), nn.Linear(width, num_outputs, bias=bias))
"""
NEW_MODEL_PACKAGE = NEW_MODEL.replace(
    "from torch import nn\n",
    "from toolbox.models.plugin_linear_model.network import linear_model\n",
).replace(
    "return nn.Sequential(nn.Flatten(), nn.Linear(width, info.num_outputs, bias=self.bias))",
    "return linear_model(width, info.num_outputs, self.bias)",
)
LAYOUTS = {
    "module": {"plugin_linear_model.py": NEW_MODEL},
    "subpackage": {
        "plugin_linear_model/__init__.py": NEW_MODEL_PACKAGE,
        "plugin_linear_model/network.py": NEW_MODEL_NETWORK,
    },
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_new_file_adds_a_model(tmp_path, monkeypatch, layout):
    import torch

    import toolbox.models
    from toolbox.datasets import DatasetInfo

    folder = tmp_path / "more_models"
    for path, text in LAYOUTS[layout].items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    module_name = "toolbox.models.plugin_linear_model"
    network_name = f"{module_name}.network"
    before = MODELS.names()
    monkeypatch.setattr(toolbox.models, "__path__", [*toolbox.models.__path__, str(folder)])
    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    monkeypatch.setattr(MODELS, "_imported", False)
    importlib.invalidate_caches()
    try:
        assert MODELS.names() == sorted([*before, "plugin_linear"])
        assert network_name not in sys.modules  # a subpackage's torch code waits for build()

        # The new name is a valid --arch everywhere: config, checks, JSON form and build.
        config = with_components(TrainingConfig(), arch="plugin_linear")
        assert type(config.model).__name__ == "PluginLinear"
        validate(config)
        plain = to_plain(dataclasses.replace(config, model=type(config.model)(bias=False)))
        assert from_plain(plain).model == type(config.model)(bias=False)
        model = config.model.build(DatasetInfo("classification", (1, 8, 8), 10))
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        assert (network_name in sys.modules) == (layout == "subpackage")
    finally:
        sys.modules.pop(network_name, None)
        sys.modules.pop(module_name, None)
        if hasattr(toolbox.models, "plugin_linear_model"):
            delattr(toolbox.models, "plugin_linear_model")


# --- Listing names stays light ----------------------------------------------------------------


@pytest.mark.slow
def test_listing_every_registry_imports_neither_torch_nor_private_modules():
    script = textwrap.dedent(
        """
        import pkgutil
        import sys

        import toolbox.config as config
        import toolbox.models
        from toolbox.metrics import METRICS

        registries = [registry for _, registry in config.SLOTS.values()] + [METRICS]
        names = [registry.names() for registry in registries]
        assert all(names), names
        config.with_components(config.TrainingConfig(), arch="vit_tiny", dataset="mnist")
        private = sorted(
            module for module in sys.modules
            if module.startswith("toolbox.") and module.rsplit(".", 1)[1].startswith("_")
        )
        print("torch:", "torch" in sys.modules, "private:", private)
        # Each model subpackage registers its model from its __init__, importing nothing inside.
        subpackages = [
            f"toolbox.models.{found.name}"
            for found in pkgutil.iter_modules(toolbox.models.__path__) if found.ispkg
        ]
        models = [toolbox.models.MODELS.get(name) for name in toolbox.models.MODELS.names()]
        registering = {model.__module__ for model in models}
        print("subpackages:", subpackages)
        print("not registering:", [name for name in subpackages if name not in registering])
        print("inside:", sorted(
            module for module in sys.modules
            if any(module.startswith(name + ".") for name in subpackages)
        ))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "torch: False private: []"
    for subpackage in ["ddpm", "trajectory", "vit"]:
        assert f"'toolbox.models.{subpackage}'" in lines[1], lines[1]
    assert lines[2:] == ["not registering: []", "inside: []"]
