"""A TrainingConfig cannot disagree with itself, and what a resume may change is read from
the fields' metadata."""

from __future__ import annotations

import dataclasses
import json

import pytest

from toolbox.component import free_on_resume
from toolbox.config import TrainingConfig, from_plain, resume_conflicts, to_plain, validate
from toolbox.config.resume import fixed_fields
from toolbox.config.training import SLOTS, with_components
from toolbox.datasets.synthetic import Synthetic
from toolbox.errors import UserError
from toolbox.models import MODELS
from toolbox.models.cnn import CNN
from toolbox.models.mlp import MLP

NAMES = [
    (slot, selector, name)
    for slot, (selector, registry) in SLOTS.items()
    for name in registry.names()
]
IDS = [f"{selector}={name}" for _, selector, name in NAMES]


def json_round_trip(config: TrainingConfig) -> TrainingConfig:
    return from_plain(json.loads(json.dumps(to_plain(config))))


# --- A selector and its component name the same one -----------------------------------------


@pytest.mark.parametrize(("slot", "selector", "name"), NAMES, ids=IDS)
def test_a_selector_alone_brings_its_component_at_its_defaults(slot, selector, name):
    config = TrainingConfig(**{selector: name})
    registry = SLOTS[slot][1]
    assert type(getattr(config, slot)) is registry.get(name)
    assert getattr(config, slot) == registry.get(name)()
    assert config == with_components(TrainingConfig(), **{selector: name})  # metrics too
    assert json_round_trip(config) == config


@pytest.mark.parametrize(("slot", "selector", "name"), NAMES, ids=IDS)
def test_a_component_alone_sets_its_selector(slot, selector, name):
    component = SLOTS[slot][1].get(name)()
    config = TrainingConfig(**{slot: component})
    assert getattr(config, selector) == name
    assert config == with_components(TrainingConfig(), **{selector: name})
    assert json_round_trip(config) == config


def test_a_component_with_its_options_keeps_them_and_names_itself():
    config = TrainingConfig(model=CNN(hidden_size=16), data=Synthetic(num_train=100))
    assert (config.arch, config.dataset) == ("cnn", "synthetic")
    assert config.model == CNN(hidden_size=16) and config.data.num_train == 100
    plain = json.loads(json.dumps(to_plain(config)))
    assert plain["arch"] == "cnn" and plain["model"]["hidden_size"] == 16
    assert from_plain(plain) == config


def test_a_model_given_alone_brings_its_metrics_unless_they_are_given():
    assert TrainingConfig(arch="ddpm").metrics == ()
    assert TrainingConfig(model=MODELS.get("ddpm")()).metrics == ()
    assert TrainingConfig(arch="cnn").metrics == ("accuracy",)
    assert TrainingConfig(arch="cnn", metrics=("accuracy", "top5")).metrics == (
        "accuracy",
        "top5",
    )


def test_a_selector_and_a_component_that_disagree_are_refused():
    with pytest.raises(UserError) as error:
        TrainingConfig(arch="resnet18", model=CNN())
    message = str(error.value)
    assert "arch is 'resnet18'" in message and "CNN (--arch cnn)" in message
    # The default selector with another class's non-default options: also a disagreement.
    with pytest.raises(UserError, match="arch is 'cnn' but model is a MLP"):
        TrainingConfig(arch="cnn", model=MLP(hidden_sizes=(8,)))


def test_an_unknown_selector_is_refused_with_the_choices():
    with pytest.raises(UserError, match="unknown model 'resnet81'.*resnet18"):
        TrainingConfig(arch="resnet81")


def test_an_unregistered_component_class_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Unregistered(MLP):
        pass

    with pytest.raises(UserError, match="Unregistered, which is not a registered model"):
        TrainingConfig(model=Unregistered())


def test_replacing_a_selector_alone_keeps_the_config_whole():
    """dataclasses.replace builds a new instance: the same rules apply (with_components is
    the way to switch a component of a config whose slots are not at their defaults)."""
    config = dataclasses.replace(TrainingConfig(), dataset="synthetic")
    assert isinstance(config.data, Synthetic)
    with pytest.raises(UserError, match="arch is 'resnet18' but model is a CNN"):
        dataclasses.replace(TrainingConfig(model=CNN(hidden_size=3)), arch="resnet18")


def test_a_run_of_a_config_given_by_selector_or_by_component_records_what_it_trained(
    tmp_path, evaluate
):
    """The Python API: config.json and the checkpoint say cnn and hold a CNN's options, load
    back equal, and test.py builds the same model from them."""
    from toolbox.training.trainer import Trainer

    tiny = {"epochs": 1, "batch_size": 32, "device": "cpu", "output_dir": tmp_path}
    data = Synthetic(num_train=96, num_test=32)
    for run_name, config in {
        "by-selector": TrainingConfig(arch="cnn", data=data, run_name="by-selector", **tiny),
        "by-component": TrainingConfig(
            model=CNN(hidden_size=16), data=data, run_name="by-component", **tiny
        ),
    }.items():
        validate(config)
        Trainer(config).fit()
        run_dir = tmp_path / run_name
        saved = json.loads((run_dir / "config.json").read_text())
        assert saved["arch"] == "cnn" and set(saved["model"]) == {
            f.name for f in dataclasses.fields(CNN)
        }
        assert from_plain(saved) == config
        assert evaluate(str(run_dir)) == 0


# --- What a resume may change: the fields' metadata -------------------------------------------

# What resume_conflicts refused before it read metadata; the metadata must say the same.
FIXED_TRAINING_OPTIONS = {
    "arch",
    "dataset",
    "optimizer",
    "scheduler",
    "criterion",
    "metrics",
    "monitor",
    "seed",
    "ema_decay",
    "output_dir",
    "run_name",
}
FREE_MODEL_OPTIONS = {"ddpm": {"sampler", "sample_steps", "ddim_eta", "num_samples"}}
FREE_DATA_OPTIONS = {"root", "path", "download", "loader", "placement", "cache"}


def test_the_fixed_training_options_are_those_marked_fixed():
    assert set(fixed_fields(TrainingConfig())) == FIXED_TRAINING_OPTIONS


@pytest.mark.parametrize(("slot", "selector", "name"), NAMES, ids=IDS)
def test_model_and_data_options_are_fixed_unless_marked_free_and_the_others_free(
    slot, selector, name
):
    component = SLOTS[slot][1].get(name)()
    names = {f.name for f in dataclasses.fields(component)}
    free_model = {"weights"} | FREE_MODEL_OPTIONS.get(name, set())  # read by new runs alone
    free = {"model": free_model, "data": FREE_DATA_OPTIONS}.get(slot)
    expected = names - free if free is not None else set()
    assert set(fixed_fields(component)) == expected


def changed_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return (*value, value[0]) if value else ("accuracy",)
    return None if value is not None else 0.5


@pytest.mark.parametrize("name", MODELS.names())
def test_resume_conflicts_name_exactly_the_fixed_options_that_changed(name):
    """Every field changed on its own: a conflict if and only if it is fixed."""
    saved = with_components(TrainingConfig(), arch=name, dataset="mnist")
    for slot in (None, *SLOTS):
        owner = saved if slot is None else getattr(saved, slot)
        for field in dataclasses.fields(owner):
            if slot is None and field.name in SLOTS:
                continue
            try:
                value = changed_value(getattr(owner, field.name))
                changed = dataclasses.replace(owner, **{field.name: value})
                new = changed if slot is None else dataclasses.replace(saved, **{slot: changed})
            except UserError:  # a selector changed alone on a changed component: refused
                continue
            key = field.name if slot is None else f"{slot}.{field.name}"
            expected = [key] if field.name in fixed_fields(owner) else []
            assert resume_conflicts(saved, new) == expected, key


def test_a_changed_component_is_reported_by_its_selector_alone():
    saved = TrainingConfig(arch="mlp")
    assert resume_conflicts(saved, TrainingConfig(arch="cnn")) == ["arch"]


def test_a_new_component_marks_its_own_free_options():
    """A component's own field declarations are what a resume reads: no list to extend."""

    @dataclasses.dataclass(frozen=True)
    class Sampled(MLP):
        temperature: float = free_on_resume(1.0)
        """Sampling temperature (changes no weight)."""

    assert "temperature" not in fixed_fields(Sampled())
    assert "hidden_sizes" in fixed_fields(Sampled())
