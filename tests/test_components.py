"""Every registered component, driven by the registries: a new one is covered with no edit.

Models build, train and reload for each input shape; optimizers descend and decay the right
parameters; schedules follow their curves and resume; criteria and metrics match references
computed directly; every config survives its JSON form; validate() names each bad option.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from toolbox.config.checks import problems, validate
from toolbox.config.plain import from_plain, to_plain
from toolbox.config.training import SLOTS, TrainingConfig, with_components
from toolbox.criteria import CRITERIA
from toolbox.data.loaders import InMemoryLoader, Normalizer
from toolbox.datasets import DATASETS, DatasetInfo, Task
from toolbox.datasets.synthetic import Synthetic
from toolbox.errors import UserError
from toolbox.metrics import METRICS
from toolbox.models import MODELS
from toolbox.optimizers import OPTIMIZERS
from toolbox.schedulers import SCHEDULERS
from toolbox.training.evaluation import evaluate
from toolbox.training.steps import per_sample_criterion

CPU = torch.device("cpu")
INPUT_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
TASKS = typing.get_args(Task)
# The option prefix of each component slot, e.g. --model.dropout, and the selector naming it.
SLOT_OF = {registry.kind: slot for slot, (_, registry) in SLOTS.items()}
ALL_COMPONENTS = [
    (registry, name)
    for registry in [registry for _, registry in SLOTS.values()] + [METRICS]
    for name in registry.names()
]


def component_id(value):
    return f"{value[0].kind}-{value[1]}" if isinstance(value, tuple) else None


def round_trip(state):
    """``state`` after torch.save and a safe torch.load, as a checkpoint holds it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# --- Models ----------------------------------------------------------------------------------


# Models that map inputs to outputs scored by --criterion; those with their own steps
# (ddpm, trajectory_recovery) are tested in their own files, on the inputs they take.
PREDICTORS = [name for name in MODELS.names() if not MODELS.get(name).own_steps]


@pytest.mark.parametrize("shape", INPUT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", PREDICTORS)
def test_model_builds_runs_and_backpropagates_for_each_input_shape(arch, shape):
    torch.manual_seed(0)
    model = MODELS.get(arch)().build(DatasetInfo("classification", shape, 10))
    model.train()
    output = model(torch.randn(2, *shape))
    assert output.shape == (2, 10)
    F.cross_entropy(output, torch.tensor([3, 7])).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{arch}: {name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{arch}: {name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("arch", PREDICTORS)
def test_model_state_dict_reloads_safely_to_identical_outputs(arch):
    info = DatasetInfo("classification", (1, 8, 8), 10)
    config = MODELS.get(arch)()
    inputs = torch.randn(2, *info.input_shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = config.build(info)
    model.train()
    model(inputs)  # moves any batch-norm running statistics away from their start
    model.eval()
    with torch.no_grad():
        expected = model(inputs)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)

    torch.manual_seed(1)
    fresh = config.build(info).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(inputs), expected)  # so the check below means something
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(fresh(inputs), expected)


@pytest.mark.parametrize(
    ("patch_size", "shape"), [(3, (1, 8, 8)), (5, (1, 28, 28)), (3, (3, 32, 32))]
)
def test_vit_patch_size_must_divide_the_image(patch_size, shape):
    config = MODELS.get("vit_tiny")(patch_size=patch_size)
    assert config.problems() == []  # only the dataset tells, so build() says it
    with pytest.raises(UserError, match=f"--model.patch-size {patch_size} does not divide"):
        config.build(DatasetInfo("classification", shape, 10))


# Models as they were built before they were built from toolbox.nn: the keys and shapes of
# their state_dicts are those of the checkpoints saved then, which must still load and resume.


ACTIVATION_CLASSES = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "tanh": "Tanh"}


def mlp_as_built_before(config, info: DatasetInfo) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(info.input_shape)
    for size in config.hidden_sizes:
        layers.append(nn.Linear(width, size))
        if config.norm == "batch":
            layers.append(nn.BatchNorm1d(size))
        elif config.norm == "layer":
            layers.append(nn.LayerNorm(size))
        layers.append(getattr(nn, ACTIVATION_CLASSES[config.activation])())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = size
    layers.append(nn.Linear(width, info.num_outputs))
    return nn.Sequential(*layers)


def cnn_as_built_before(config, info: DatasetInfo) -> nn.Module:
    first, second = config.channels
    return nn.Sequential(
        nn.Conv2d(info.input_shape[0], first, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(first, second, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(4),
        nn.Flatten(),
        nn.Dropout(config.dropout),
        nn.Linear(second * 16, config.hidden_size),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden_size, info.num_outputs),
    )


class TorchEncoderViT(nn.Module):
    """vit_tiny as it was built from torch's nn.TransformerEncoder."""

    def __init__(self, config, info: DatasetInfo) -> None:
        super().__init__()
        channels, height, width = info.input_shape
        patch, dim = config.patch_size, config.embed_dim
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        num_patches = (height // patch) * (width // patch)
        self.position = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            config.num_heads,
            int(dim * config.mlp_ratio),
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, info.num_outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)
        class_token = self.class_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([class_token, tokens], dim=1) + self.position
        return self.head(self.norm(self.encoder(tokens)[:, 0]))


BUILT_BEFORE = [
    ("mlp", {}, mlp_as_built_before),
    ("mlp", {"norm": "batch"}, mlp_as_built_before),
    ("mlp", {"norm": "layer", "activation": "gelu", "hidden_sizes": (32, 16)}, mlp_as_built_before),
    ("mlp", {"hidden_sizes": (), "dropout": 0.0}, mlp_as_built_before),
    ("cnn", {}, cnn_as_built_before),
    ("vit_tiny", {"depth": 2}, TorchEncoderViT),
    ("vit_tiny", {"depth": 2, "num_heads": 4, "mlp_ratio": 1.5, "dropout": 0.1}, TorchEncoderViT),
]


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("arch", "changes", "build_before"), BUILT_BEFORE)
def test_model_keeps_the_state_dict_and_function_it_had_before_toolbox_nn(
    arch, changes, build_before, shape
):
    info = DatasetInfo("classification", shape, 10)
    config = MODELS.get(arch)(**changes)
    torch.manual_seed(0)
    model = config.build(info)
    torch.manual_seed(0)
    before = build_before(config, info)
    # The same keys, shapes and parameter order (which optimizer states follow), and a seeded
    # build starts from the same values.
    ours, theirs = model.state_dict(), before.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    assert [name for name, _ in model.named_parameters()] == [
        name for name, _ in before.named_parameters()
    ]

    # Weights trained away from their initial values (the copies of a layer apart) give the
    # same outputs and gradients.
    with torch.no_grad():
        for parameter in before.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.load_state_dict(before.state_dict())
    inputs = torch.randn(4, *shape)
    model.eval()
    before.eval()
    with torch.no_grad():  # torch's encoder takes its fused inference path here
        torch.testing.assert_close(model(inputs), before(inputs))
    if not getattr(config, "dropout", 0.0):  # dropout draws its masks in a different order
        model.train()
        before.train()
        model(inputs).square().sum().backward()
        before(inputs).square().sum().backward()
        for (name, ours), theirs in zip(model.named_parameters(), before.parameters(), strict=True):
            torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4, msg=name)


# --- Problems of component configs ------------------------------------------------------------


@pytest.mark.parametrize("component", ALL_COMPONENTS, ids=component_id)
def test_every_component_has_no_problems_at_its_defaults(component):
    registry, name = component
    assert registry.get(name)().problems() == []


# (registry, name, field, bad value, other changes the case needs)
BAD_VALUES = [
    (MODELS, "mlp", "dropout", 1.5, {}),
    (MODELS, "mlp", "dropout", -0.1, {}),
    (MODELS, "mlp", "hidden_sizes", (64, 0), {}),
    (MODELS, "cnn", "channels", (0, 64), {}),
    (MODELS, "cnn", "hidden_size", 0, {}),
    (MODELS, "cnn", "dropout", 1.0, {}),
    (MODELS, "vit_tiny", "patch_size", 0, {}),
    (MODELS, "vit_tiny", "embed_dim", -8, {}),
    (MODELS, "vit_tiny", "depth", 0, {}),
    (MODELS, "vit_tiny", "num_heads", 0, {}),
    (MODELS, "vit_tiny", "num_heads", 5, {}),
    (MODELS, "vit_tiny", "dropout", 1.0, {}),
    (MODELS, "vit_tiny", "mlp_ratio", math.nan, {}),
    (MODELS, "vit_tiny", "mlp_ratio", math.inf, {}),
    (MODELS, "vit_tiny", "mlp_ratio", 0.001, {}),  # int(192 * 0.001): an MLP 0 units wide
    (MODELS, "trajectory_recovery", "eval_seed", 2**64, {}),
    (OPTIMIZERS, "adamw", "lr", 0.0, {}),
    (OPTIMIZERS, "adamw", "weight_decay", -0.1, {}),
    (OPTIMIZERS, "adam", "beta1", 1.0, {}),
    (OPTIMIZERS, "adam", "beta2", -0.5, {}),
    (OPTIMIZERS, "sgd", "lr", -1.0, {}),
    (OPTIMIZERS, "sgd", "momentum", 1.0, {}),
    (OPTIMIZERS, "sgd", "nesterov", True, {"momentum": 0.0}),
    (OPTIMIZERS, "adamw", "lr", math.inf, {}),
    (OPTIMIZERS, "sgd", "weight_decay", math.inf, {}),
    (OPTIMIZERS, "adam", "eps", -1.0, {}),
    (OPTIMIZERS, "adamw", "eps", math.nan, {}),
    (OPTIMIZERS, "adamw", "eps", 0.0, {}),
    (OPTIMIZERS, "adam", "eps", math.inf, {}),
    (SCHEDULERS, "step", "step_epochs", 0, {}),
    (SCHEDULERS, "step", "gamma", 0.0, {}),
    (SCHEDULERS, "step", "gamma", 1.5, {}),
    (SCHEDULERS, "linear", "final_fraction", 1.5, {}),
    (SCHEDULERS, "cosine", "final_fraction", -0.1, {}),
    (SCHEDULERS, "warmup_cosine", "warmup_epochs", -1.0, {}),
    (SCHEDULERS, "plateau", "factor", 1.0, {}),
    (SCHEDULERS, "plateau", "factor", 0.0, {}),
    (SCHEDULERS, "plateau", "patience", -1, {}),
    (SCHEDULERS, "warmup_cosine", "warmup_epochs", math.inf, {}),
    (SCHEDULERS, "plateau", "min_lr", math.nan, {}),
    (SCHEDULERS, "plateau", "min_lr", -1.0, {}),
    (SCHEDULERS, "plateau", "min_lr", math.inf, {}),
    (CRITERIA, "cross_entropy", "label_smoothing", 1.0, {}),
    (DATASETS, "digits", "split_seed", 2**64, {}),
    (DATASETS, "cifar10", "split_seed", -1, {}),
    # Sizes that no machine holds: refused before build() allocates them.
    (DATASETS, "synthetic", "num_train", 2**62, {}),
    (DATASETS, "synthetic", "input_shape", (100_000, 100_000), {}),
    (DATASETS, "synthetic", "num_classes", 2**40, {}),
    (DATASETS, "synthetic", "noise", math.inf, {}),
    (DATASETS, "synthetic", "seed", 2**64, {}),
    (DATASETS, "trajectories", "num_train", 2**62, {}),
    (DATASETS, "trajectories", "max_length", 2**40, {}),
    (DATASETS, "trajectories", "sample_interval", math.inf, {}),
    (DATASETS, "trajectories", "max_speed", math.inf, {}),
    (DATASETS, "trajectories", "turn_std", math.inf, {}),
    (DATASETS, "trajectories", "start_radius", math.inf, {}),
    (DATASETS, "trajectories", "seed", 2**63, {}),
]


@pytest.mark.parametrize(
    ("registry", "name", "field", "value", "others"),
    BAD_VALUES,
    ids=[f"{name}-{field}={value}" for _, name, field, value, _ in BAD_VALUES],
)
def test_bad_value_gets_a_message_naming_the_option(registry, name, field, value, others):
    config = registry.get(name)(**{field: value, **others})
    option = f"--{SLOT_OF[registry.kind]}.{field.replace('_', '-')}"
    found = config.problems()
    assert len(found) == 1, found
    assert option in found[0]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert str(value) in found[0]
    # validate() reports it for the whole config, under the same option.
    selector = SLOTS[SLOT_OF[registry.kind]][0]
    training = dataclasses.replace(
        with_components(TrainingConfig(), **{selector: name}),
        **{SLOT_OF[registry.kind]: config},
    )
    with pytest.raises(UserError, match=option.replace(".", r"\.")):
        validate(training)


def test_synthetic_data_beyond_the_available_memory_is_refused_before_it_is_made(monkeypatch):
    monkeypatch.setattr("toolbox.datasets.available_memory", lambda: 2 * 10**9)
    # 264 bytes a sample (a float32 1x8x8 input and an int64 label), 512 test samples.
    assert Synthetic(num_train=7_000_000).problems() == []  # 1.85 GB
    [problem] = Synthetic(num_train=8_000_000).problems()  # 2.11 GB
    assert problem.startswith("--data.num-train 8000000, --data.num-test 512,"), problem
    assert "at least 2.1 GB, more than the 2.0 GB of memory available" in problem
    assert "at most 7,575,747 samples of this size fit" in problem


# --- Optimizers ------------------------------------------------------------------------------


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.LayerNorm(8),
        nn.Linear(8, 3),
    )


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_covers_every_parameter_and_lowers_a_quadratic_loss(name):
    config = OPTIMIZERS.get(name)()
    model = small_model()
    optimizer = config.build(model)
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    assert all(group["lr"] == config.lr for group in optimizer.param_groups)

    targets = [torch.randn_like(p) for p in model.parameters()]

    def loss() -> torch.Tensor:
        return sum(((p - t) ** 2).sum() for p, t in zip(model.parameters(), targets, strict=True))

    before = loss()
    before.backward()
    optimizer.step()
    assert loss().item() < before.item()


@pytest.mark.parametrize("decay_norm_and_bias", [False, True])
@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_weight_decay_applies_to_matrices_and_kernels_only_by_default(name, decay_norm_and_bias):
    config = OPTIMIZERS.get(name)(weight_decay=0.05, decay_norm_and_bias=decay_norm_and_bias)
    model = small_model()
    with torch.no_grad():  # no zeros (a zero bias stays zero under decay)
        for parameter in model.parameters():
            parameter.copy_(torch.rand_like(parameter) + 0.5)
    optimizer = config.build(model)
    decay_of = {
        id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
    }
    for parameter in model.parameters():
        decays = decay_norm_and_bias or parameter.ndim >= 2
        assert decay_of[id(parameter)] == (0.05 if decays else 0.0)

    # With zero gradients only the decay moves a parameter: exactly the decayed ones move.
    before = [p.detach().clone() for p in model.parameters()]
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    for old, parameter in zip(before, model.parameters(), strict=True):
        decays = decay_norm_and_bias or parameter.ndim >= 2
        assert torch.equal(old, parameter.detach()) is not decays, tuple(parameter.shape)


def test_vit_class_token_and_positions_are_not_decayed():
    info = DatasetInfo("classification", (1, 8, 8), 10)
    model = MODELS.get("vit_tiny")(depth=1).build(info)
    optimizer = OPTIMIZERS.get("adamw")(weight_decay=0.05).build(model)
    undecayed = {
        id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]
    }
    assert id(model.class_token) in undecayed and id(model.position) in undecayed
    assert id(model.patch_embed.weight) not in undecayed


# --- Schedulers ------------------------------------------------------------------------------

PEAK = 0.1
STEPS_PER_EPOCH, EPOCHS = 10, 5
TOTAL = STEPS_PER_EPOCH * EPOCHS


def scheduled(config, mode="min", steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS):
    model = nn.Linear(2, 1)  # two parameter groups: the weight and the bias
    optimizer = OPTIMIZERS.get("sgd")(lr=PEAK).build(model)
    return optimizer, config.build(optimizer, steps_per_epoch, steps_per_epoch * epochs, mode)


def lr_of(optimizer) -> float:
    rates = {group["lr"] for group in optimizer.param_groups}
    assert len(rates) == 1, rates  # every group follows the schedule
    return rates.pop()


def step_curve(config, steps=TOTAL, **kwargs) -> list[float]:
    """The lr of each optimizer step, then the lr after the last step."""
    optimizer, scheduler = scheduled(config, **kwargs)
    rates = []
    for _ in range(steps):
        rates.append(lr_of(optimizer))
        optimizer.step()
        scheduler.step()
    return [*rates, lr_of(optimizer)]


def eval_curve(config, values, mode="min") -> list[float]:
    """The lr after each evaluation reporting one of ``values``."""
    optimizer, scheduler = scheduled(config, mode)
    rates = []
    for value in values:
        optimizer.step()
        scheduler.step(value)
        rates.append(lr_of(optimizer))
    return rates


# "never" (a constant rate) follows the per-step curve too: stepping it changes nothing.
STEP_SCHEDULERS = [n for n in SCHEDULERS.names() if SCHEDULERS.get(n).interval != "eval"]


def test_every_scheduler_is_stepped_per_step_or_per_evaluation():
    intervals = {SCHEDULERS.get(n).interval for n in SCHEDULERS.names()}
    assert intervals <= {"step", "eval", "never"}
    assert "plateau" not in STEP_SCHEDULERS and "cosine" in STEP_SCHEDULERS
    assert SCHEDULERS.get("none").interval == "never"


@pytest.mark.parametrize("name", STEP_SCHEDULERS)
def test_step_schedule_stays_within_zero_and_the_peak(name):
    rates = step_curve(SCHEDULERS.get(name)())
    assert all(0.0 < rate <= PEAK * (1 + 1e-12) for rate in rates[:-1]), rates
    assert 0.0 <= rates[-1] <= PEAK


def test_none_is_constant():
    assert step_curve(SCHEDULERS.get("none")()) == [PEAK] * (TOTAL + 1)


def test_step_decays_by_gamma_at_each_boundary():
    rates = step_curve(SCHEDULERS.get("step")(step_epochs=2, gamma=0.5))
    boundary = 2 * STEPS_PER_EPOCH
    assert rates == pytest.approx([PEAK * 0.5 ** (i // boundary) for i in range(TOTAL + 1)])
    assert rates[boundary - 1] == pytest.approx(PEAK)
    assert rates[boundary] == pytest.approx(PEAK * 0.5)


@pytest.mark.parametrize("final_fraction", [0.0, 0.1])
def test_linear_goes_from_the_peak_to_the_final_fraction(final_fraction):
    rates = step_curve(SCHEDULERS.get("linear")(final_fraction=final_fraction))
    expected = [PEAK * (1 - (1 - final_fraction) * i / TOTAL) for i in range(TOTAL + 1)]
    assert rates == pytest.approx(expected)
    assert rates[0] == PEAK and rates[-1] == pytest.approx(final_fraction * PEAK)


@pytest.mark.parametrize("final_fraction", [0.0, 0.1])
def test_cosine_goes_from_the_peak_to_the_final_fraction(final_fraction):
    rates = step_curve(SCHEDULERS.get("cosine")(final_fraction=final_fraction))
    expected = [
        PEAK * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * i / TOTAL)))
        for i in range(TOTAL + 1)
    ]
    assert rates == pytest.approx(expected)
    assert rates[0] == PEAK and rates[-1] == pytest.approx(final_fraction * PEAK, abs=1e-12)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_warmup_cosine_rises_linearly_then_follows_the_cosine():
    final_fraction, warmup_epochs = 0.1, 1.5
    rates = step_curve(
        SCHEDULERS.get("warmup_cosine")(final_fraction=final_fraction, warmup_epochs=warmup_epochs)
    )
    warmup = round(warmup_epochs * STEPS_PER_EPOCH)
    assert rates[:warmup] == pytest.approx([PEAK * (i + 1) / warmup for i in range(warmup)])
    assert rates[warmup - 1] == pytest.approx(PEAK)
    decay = TOTAL - warmup
    cosine = [
        PEAK * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * i / decay)))
        for i in range(decay + 1)
    ]
    assert rates[warmup:] == pytest.approx(cosine)
    assert rates[-1] == pytest.approx(final_fraction * PEAK)


def test_plateau_reduces_after_patience_evaluations_without_improvement_when_lower_is_better():
    config = SCHEDULERS.get("plateau")(factor=0.5, patience=2)
    # Improves twice, then stalls: the third evaluation without improvement reduces the lr.
    rates = eval_curve(config, [1.0, 0.8, 0.8, 0.9, 0.85, 0.9, 0.9, 0.9], mode="min")
    assert rates == pytest.approx([PEAK] * 4 + [PEAK / 2] * 3 + [PEAK / 4])
    # A falling metric is an improvement each time: no reduction.
    assert eval_curve(config, [1.0, 0.9, 0.8, 0.7, 0.6], mode="min") == [PEAK] * 5


def test_plateau_reduces_after_patience_evaluations_without_improvement_when_higher_is_better():
    config = SCHEDULERS.get("plateau")(factor=0.5, patience=2)
    rates = eval_curve(config, [0.1, 0.5, 0.5, 0.4, 0.45, 0.4, 0.4, 0.4], mode="max")
    assert rates == pytest.approx([PEAK] * 4 + [PEAK / 2] * 3 + [PEAK / 4])
    assert eval_curve(config, [0.1, 0.2, 0.3, 0.4, 0.5], mode="max") == [PEAK] * 5


def test_plateau_follows_the_monitored_metric_direction():
    config = TrainingConfig(metrics=("accuracy",), monitor="val_accuracy")
    assert config.monitor_mode == "max"
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    plateau = SCHEDULERS.get("plateau")(patience=1)
    assert eval_curve(plateau, rising, mode=config.monitor_mode) == [PEAK] * len(rising)
    assert eval_curve(plateau, rising, mode="min")[-1] < PEAK


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_scheduler_state_round_trip_continues_the_same_curve(name):
    config = SCHEDULERS.get(name)()
    epochs = 40  # long enough for the default step schedule to decay after the save
    values = [1.0, 0.9, 0.95, 0.95] + [0.95] * 12  # a plateau around the save point
    saved_at = 4 if config.interval == "eval" else 290

    def advance(optimizer, scheduler, start, stop):
        rates = []
        for index in range(start, stop):
            optimizer.step()
            if config.interval == "eval":
                scheduler.step(values[index])
            else:
                scheduler.step()
            rates.append(lr_of(optimizer))
        return rates

    stop = len(values) if config.interval == "eval" else STEPS_PER_EPOCH * epochs
    optimizer, scheduler = scheduled(config, epochs=epochs)
    advance(optimizer, scheduler, 0, saved_at)
    state = round_trip({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    expected = advance(optimizer, scheduler, saved_at, stop)

    optimizer, scheduler = scheduled(config, epochs=epochs)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert advance(optimizer, scheduler, saved_at, stop) == expected
    if name != "none":  # the curve still changes after the save, so resuming is tested
        assert len(set(expected)) > 1


# --- Criteria --------------------------------------------------------------------------------


def batch_for(task, samples=6, outputs=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    output = torch.randn(samples, outputs, generator=generator)
    if task == "classification":
        target = torch.randint(outputs, (samples,), generator=generator)
    else:
        target = torch.randn(samples, outputs, generator=generator)
    return output, target


CRITERION_TASKS = [(n, task) for n in CRITERIA.names() for task in CRITERIA.get(n).tasks]


@pytest.mark.parametrize(("name", "task"), CRITERION_TASKS)
def test_criterion_applies_to_its_declared_tasks(name, task):
    assert task in TASKS
    criterion = CRITERIA.get(name)().build()
    output, target = batch_for(task)
    output.requires_grad_(True)
    loss = criterion(output, target)
    assert loss.shape == () and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert output.grad.shape == output.shape and torch.isfinite(output.grad).all()
    # Evaluation averages per-sample losses: their mean must be the training loss.
    per_sample = per_sample_criterion(criterion)(output, target)
    assert per_sample.reshape(len(target), -1).mean(dim=1).mean().item() == pytest.approx(
        loss.item()
    )
    assert criterion.reduction == "mean"  # the copy left the training criterion as it was


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_cross_entropy_label_smoothing_matches_torch(smoothing):
    output, target = batch_for("classification")
    loss = CRITERIA.get("cross_entropy")(label_smoothing=smoothing).build()(output, target)
    expected = F.cross_entropy(output, target, label_smoothing=smoothing)
    assert loss.item() == pytest.approx(expected.item())
    # By hand: (1 - s) * NLL of the target + s * mean NLL over every class.
    log_p = torch.log_softmax(output.double(), dim=1).numpy()
    nll = -log_p[np.arange(len(target)), target.numpy()]
    by_hand = ((1 - smoothing) * nll + smoothing * -log_p.mean(axis=1)).mean()
    assert loss.item() == pytest.approx(by_hand)


@pytest.mark.parametrize(
    ("name", "reference"),
    [("mse", lambda d: np.mean(d**2)), ("l1", lambda d: np.mean(np.abs(d)))],
)
def test_regression_losses_match_hand_computation(name, reference):
    output, target = batch_for("regression")
    loss = CRITERIA.get(name)().build()(output, target)
    expected = reference(output.double().numpy() - target.double().numpy())
    assert loss.item() == pytest.approx(expected)


# --- Metrics and exact evaluation ---------------------------------------------------------------

SPLIT_SIZE = 10  # not divisible by 3 or 4: the last batch is smaller
BATCH_SIZES = [1, 3, 4, SPLIT_SIZE]


def split_for(task, classes=7, seed=0):
    output, target = batch_for(task, samples=SPLIT_SIZE, outputs=classes, seed=seed)
    if task == "regression":
        output = output[:, :2]
        target = target[:, :2]
    return output, target


def evaluated(output, target, batch_size, metrics, criterion_name):
    """evaluate() of a model that outputs its input, over batches of ``batch_size``."""
    loader = InMemoryLoader(
        {"input": output, "target": target},
        batch_size,
        device=CPU,
        shuffle=False,
        drop_last=False,
    )
    return evaluate(
        nn.Identity(),
        loader,
        normalizer=Normalizer((0.0,), (1.0,), ndim=output.ndim - 1, device=CPU),
        criterion=CRITERIA.get(criterion_name)().build(),
        metrics={name: METRICS.get(name)() for name in metrics},
        device=CPU,
        precision="fp32",
        classification=target.dtype == torch.int64,
    )


def default_criterion(task):
    return next(n for n in CRITERIA.names() if task in CRITERIA.get(n).tasks)


METRIC_TASKS = [(n, task) for n in METRICS.names() for task in METRICS.get(n).tasks]


@pytest.mark.parametrize(("name", "task"), METRIC_TASKS)
def test_metric_is_the_same_for_every_batch_split(name, task):
    output, target = split_for(task)
    values = [
        evaluated(output, target, size, [name], default_criterion(task)).metrics[name]
        for size in BATCH_SIZES
    ]
    assert values == pytest.approx([values[-1]] * len(values), rel=1e-6)
    assert math.isfinite(values[-1])


@pytest.mark.parametrize(("name", "task"), METRIC_TASKS)
def test_metric_prefers_a_perfect_prediction_in_its_declared_direction(name, task):
    output, target = split_for(task, classes=10)
    perfect = F.one_hot(target, 10).float() if task == "classification" else target.clone()
    metric = METRICS.get(name)
    scores = [
        evaluated(out, target, 4, [name], default_criterion(task)).metrics[name]
        for out in (perfect, output)
    ]
    better, worse = scores if metric.higher_is_better else scores[::-1]
    assert better > worse, scores
    monitor = TrainingConfig(metrics=(name,), monitor=f"val_{name}").monitor_mode
    assert monitor == ("max" if metric.higher_is_better else "min")


def top_k_reference(output, target, k):
    top = np.argsort(-output.numpy(), axis=1)[:, : min(k, output.shape[1])]
    return float(np.mean([t in row for row, t in zip(top, target.numpy(), strict=True)]))


METRIC_REFERENCES = {
    "accuracy": lambda o, t: float(np.mean(o.numpy().argmax(axis=1) == t.numpy())),
    "top5": lambda o, t: top_k_reference(o, t, 5),
    "mae": lambda o, t: float(np.mean(np.abs(o.double().numpy() - t.double().numpy()))),
    "rmse": lambda o, t: float(np.sqrt(np.mean((o.double().numpy() - t.double().numpy()) ** 2))),
}


@pytest.mark.parametrize("classes", [3, 7])
@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("name", sorted(METRIC_REFERENCES))
def test_metric_matches_a_direct_computation(name, batch_size, classes):
    task = METRICS.get(name).tasks[0]
    output, target = split_for(task, classes=classes, seed=classes)
    result = evaluated(output, target, batch_size, [name], default_criterion(task))
    assert result.metrics[name] == pytest.approx(METRIC_REFERENCES[name](output, target))


def test_top5_with_fewer_than_five_classes_counts_every_sample():
    output, target = split_for("classification", classes=3)
    result = evaluated(output, target, 3, ["top5", "accuracy"], "cross_entropy")
    assert result.metrics["top5"] == 1.0
    assert result.metrics["accuracy"] < 1.0  # the data is not trivially right


def test_rmse_is_the_root_of_the_mean_square_over_every_value():
    output, target = split_for("regression")
    result = evaluated(output, target, 3, ["rmse", "mae"], "mse")
    squares = (output.double() - target.double()).numpy() ** 2
    assert result.metrics["rmse"] == pytest.approx(math.sqrt(squares.mean()))
    # Not the mean of per-batch roots, nor of per-sample roots.
    per_sample = np.sqrt(squares.mean(axis=1)).mean()
    assert result.metrics["rmse"] != pytest.approx(per_sample)


@pytest.mark.parametrize("name", ["mae", "rmse"])
def test_mae_and_rmse_equal_scikit_learn_on_large_targets_with_small_errors(name):
    """Targets of 500..1500 with errors near 1, as a regression on unscaled targets gives:
    summed in float32, MAE and RMSE are off by about 1e-8 relative (the batch sums need more
    than float32's 24 bits); summed in float64 they equal scikit-learn's on the same
    predictions. It is given them in float64, as a user reads them back: float32 arrays it
    sums in float32."""
    from sklearn.metrics import mean_absolute_error, root_mean_squared_error

    generator = torch.Generator().manual_seed(0)
    target = 500 + 1000 * torch.rand(100_000, 1, generator=generator)
    output = target + torch.randn(100_000, 1, generator=generator)
    result = evaluated(output, target, 4096, [name], "mse")  # last batch smaller
    reference = {"mae": mean_absolute_error, "rmse": root_mean_squared_error}[name]
    assert result.metrics[name] == pytest.approx(
        reference(target.double().numpy(), output.double().numpy()), rel=1e-12
    )


@pytest.mark.parametrize(("name", "task"), CRITERION_TASKS)
def test_evaluation_loss_is_exact_for_every_batch_split(name, task):
    output, target = split_for(task)
    expected = CRITERIA.get(name)().build()(output, target).item()
    for size in BATCH_SIZES:
        assert evaluated(output, target, size, [], name).loss == pytest.approx(expected)


# --- JSON form of the config ------------------------------------------------------------------


def json_round_trip(config: TrainingConfig) -> TrainingConfig:
    return from_plain(json.loads(json.dumps(to_plain(config))))


SELECTOR_NAMES = [
    (selector, name) for selector, registry in SLOTS.values() for name in registry.names()
]


@pytest.mark.parametrize(("selector", "name"), SELECTOR_NAMES)
def test_every_component_survives_the_json_form_at_its_defaults(selector, name):
    config = with_components(TrainingConfig(), **{selector: name})
    assert getattr(config, selector) == name
    assert json_round_trip(config) == config


def changed(hint, default):
    """A value of type ``hint`` different from ``default`` (validity does not matter here)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return changed(args[0], default)
    if origin in (Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        return changed(options[0], None) if default is None else None
    if origin is Literal:
        return next(arg for arg in args if arg != default)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (*(default or ()), changed(args[0], None))
        values = default if default is not None else (None,) * len(args)
        return tuple(changed(arg, value) for arg, value in zip(args, values, strict=True))
    if hint is bool:
        return not default
    if hint is int:
        return (default or 0) + 3
    if hint is float:
        return (default or 0.0) + 0.375
    if hint is str:
        return f"{default or ''}_changed"
    if hint is Path:
        return Path("elsewhere") / (default or "file.txt")
    raise AssertionError(f"no changed value for a field of type {hint}; extend this test")


def with_every_field_changed(config):
    hints = typing.get_type_hints(type(config), include_extras=True)
    return dataclasses.replace(
        config,
        **{
            f.name: changed(hints[f.name], getattr(config, f.name))
            for f in dataclasses.fields(config)
        },
    )


@pytest.mark.parametrize(("selector", "name"), SELECTOR_NAMES)
def test_every_component_survives_the_json_form_with_every_field_changed(selector, name):
    slot = next(slot for slot, (sel, _) in SLOTS.items() if sel == selector)
    config = with_components(TrainingConfig(), **{selector: name})
    component = with_every_field_changed(getattr(config, slot))
    if dataclasses.fields(component):
        assert component != getattr(config, slot)
    config = dataclasses.replace(config, **{slot: component})
    assert json_round_trip(config) == config


def test_training_options_survive_the_json_form_with_tuples_none_and_paths():
    config = dataclasses.replace(
        with_components(TrainingConfig(), arch="mlp", dataset="synthetic", scheduler="step"),
        metrics=("accuracy", "top5"),
        monitor="val_top5",
        clip_grad=1.5,
        run_name="trial",
        resume=Path("outputs/trial/checkpoint.pth.tar"),
        output_dir=Path("/tmp/runs"),
        precision="bf16",
        compile=True,
        epochs=3,
    )
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, hidden_sizes=(64, 32), norm="layer"),
        data=dataclasses.replace(config.data, input_shape=(3, 4, 4), noise=0.5),
    )
    assert json_round_trip(config) == config
    plain = json.loads(json.dumps(to_plain(config)))
    assert plain["resume"] == "outputs/trial/checkpoint.pth.tar"
    assert plain["model"]["hidden_sizes"] == [64, 32]
    # None where a value may be absent comes back as None, not as the default.
    back = json_round_trip(dataclasses.replace(config, clip_grad=None, resume=None))
    assert back.clip_grad is None and back.resume is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda p: p.update(bogus=1), "bogus"),
        (lambda p: p["model"].update(widht=3), "widht"),
        (lambda p: p["optim"].update(learning_rate=0.1), "learning_rate"),
    ],
    ids=["top-level", "model", "optim"],
)
def test_from_plain_refuses_an_unknown_key_naming_it(change, named):
    plain = to_plain(TrainingConfig())
    change(plain)
    with pytest.raises(UserError, match=named):
        from_plain(plain)


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("epochs",), "ten", "epochs"),
        (("epochs",), True, "epochs"),
        (("metrics",), "accuracy", "metrics"),
        (("precision",), "fp64", "precision"),
        (("output_dir",), 3, "output_dir"),
        (("model", "dropout"), "high", "model.dropout"),
        (("model", "hidden_sizes"), [64, "wide"], "model.hidden_sizes"),
        (("sched", "final_fraction"), None, "sched.final_fraction"),
        (("arch",), ["mlp"], "arch"),
    ],
)
def test_from_plain_refuses_a_wrong_type_naming_the_field(path, value, named):
    plain = to_plain(TrainingConfig())
    target = plain
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(UserError, match=rf"\b{named}\b"):
        from_plain(plain)


def test_from_plain_refuses_an_unknown_component_name():
    plain = to_plain(TrainingConfig())
    plain["arch"] = "resnet81"
    with pytest.raises(UserError, match="Did you mean 'resnet18'"):
        from_plain(plain)


# --- validate() --------------------------------------------------------------------------------


def validation_message(config) -> str:
    with pytest.raises(UserError) as error:
        validate(config)
    return str(error.value)


def test_defaults_and_every_component_at_its_defaults_validate():
    validate(TrainingConfig())
    for selector, name in SELECTOR_NAMES:
        if selector in ("arch", "optimizer", "scheduler"):
            validate(with_components(TrainingConfig(), **{selector: name}))


def synthetic(task: str, **changes) -> TrainingConfig:
    config = with_components(TrainingConfig(), dataset="synthetic")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, task=task), **changes)


@pytest.mark.parametrize("name", CRITERIA.names())
def test_criterion_is_accepted_exactly_for_its_tasks(name):
    tasks = CRITERIA.get(name).tasks
    for task in TASKS:
        config = dataclasses.replace(
            synthetic(task, metrics=()), criterion=name, loss=CRITERIA.get(name)()
        )
        if task in tasks:
            validate(config)
        else:
            message = validation_message(config)
            assert f"--criterion {name} does not apply to the {task} dataset" in message
            fitting = [n for n in CRITERIA.names() if task in CRITERIA.get(n).tasks]
            assert f"use one of: {', '.join(fitting)}." in message


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_is_accepted_exactly_for_its_tasks(name):
    tasks = METRICS.get(name).tasks
    for task in TASKS:
        criterion = default_criterion(task)
        config = dataclasses.replace(
            synthetic(task, metrics=(name,)),
            criterion=criterion,
            loss=CRITERIA.get(criterion)(),
        )
        if task in tasks:
            validate(config)
        else:
            message = validation_message(config)
            assert f"--metrics {name} does not apply to the {task} dataset" in message


def test_mse_and_rmse_on_digits_are_refused():
    message = validation_message(with_components(TrainingConfig(), criterion="mse"))
    assert "--criterion mse does not apply to the classification dataset 'digits'" in message
    message = validation_message(TrainingConfig(metrics=("rmse",)))
    assert "--metrics rmse does not apply to the classification dataset 'digits'" in message


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"monitor": "val_f1"}, "--monitor"),
        ({"monitor": "val_top5"}, "--monitor"),  # a metric not listed in --metrics
        ({"monitor": "accuracy"}, "--monitor"),
        ({"metrics": ("accuracy", "accuracy")}, "--metrics"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"eval_batch_size": -1}, "--eval-batch-size"),
        ({"grad_accum": 0}, "--grad-accum"),
        ({"eval_every": 0}, "--eval-every"),
        ({"log_every": -5}, "--log-every"),
        ({"num_workers": -1}, "--num-workers"),
        ({"clip_grad": 0.0}, "--clip-grad"),
        ({"clip_grad": math.inf}, "--clip-grad"),
        ({"max_steps": -1}, "--max-steps"),
        ({"eval_every_steps": -1}, "--eval-every-steps"),
        ({"limit_val_batches": -1}, "--limit-val-batches"),
        ({"dist_timeout": math.inf}, "--dist-timeout"),
        ({"dist_timeout": 1e20}, "--dist-timeout"),  # past what a timedelta holds
        ({"device": "gpu"}, "--device"),
        ({"run_name": "a/b"}, "--run-name"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_training_option_is_named(changes, option):
    config = dataclasses.replace(TrainingConfig(), **changes)
    found = problems(config)
    assert len(found) == 1 and found[0].startswith(option), found
    assert option in validation_message(config)


def test_monitor_of_a_listed_metric_is_accepted():
    validate(TrainingConfig(metrics=("accuracy", "top5"), monitor="val_top5"))


def test_several_problems_are_reported_together():
    config = dataclasses.replace(
        with_components(TrainingConfig(), criterion="mse"),
        batch_size=0,
        epochs=-1,
        metrics=("rmse",),
        monitor="val_f1",
        model=MODELS.get("mlp")(dropout=1.5),
    )
    message = validation_message(config)
    lines = message.splitlines()
    assert lines[0] == "Invalid configuration:"
    options = [
        "--epochs",
        "--batch-size",
        "--model.dropout",
        "--criterion",
        "--metrics",
        "--monitor",
    ]
    assert len(lines) == 1 + len(options)
    for option in options:
        assert sum(line.startswith(f"  - {option}") for line in lines) == 1, option
