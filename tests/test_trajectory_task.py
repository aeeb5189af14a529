"""trajectory_recovery: the encoder ignores padding and the hidden points' true values, the
mask hides the right points, a short run learns to beat guessing each trajectory's centre,
and the config's messages."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys

import pandas as pd
import pytest
import torch

from toolbox.datasets import DatasetInfo
from toolbox.datasets.trajectories import Trajectories
from toolbox.errors import UserError
from toolbox.models.trajectory import TrajectoryRecoveryConfig
from toolbox.models.trajectory.network import hide_points
from toolbox.tasks.trajectory import centre, haversine

MAX_LENGTH = 24
DATA = Trajectories(num_train=256, num_test=64, max_length=MAX_LENGTH)
TINY = TrajectoryRecoveryConfig(width=16, depth=2, heads=2)


@pytest.fixture(scope="module")
def splits():
    return DATA.build()


def tiny_model(**changes):
    torch.manual_seed(0)
    info = DatasetInfo("regression", (MAX_LENGTH, 2), 2)
    return dataclasses.replace(TINY, **changes).build(info)


def first(split: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    return {key: value[:count] for key, value in split.items()}


# --- The module ------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["rotary", "sinusoidal", "learned"])
def test_steps_give_named_losses_per_sample_errors_and_gradients_everywhere(splits, positions):
    model = tiny_model(positions=positions)
    batch = first(splits.train, 6)
    # The head starts at zero (every guess at the centre), which stops gradients to the trunk.
    torch.nn.init.normal_(model.head.weight, std=0.1)
    result = model.training_step(batch)
    assert set(result.losses) == set(model.loss_names) == {"loss", "error_m"}
    assert all(loss.shape == () for loss in result.losses.values())
    result.losses["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(parameter.grad).all(), name

    errors = model.eval().evaluation_step(batch).outputs["error_m"]
    assert errors.shape == (6,) and (errors > 0).all()
    hidden = torch.zeros(6, MAX_LENGTH, dtype=torch.bool)
    assert model(batch["input"], batch["length"], hidden).shape == (6, MAX_LENGTH, 2)


def test_padding_and_hidden_points_never_reach_the_predictions(splits):
    model = tiny_model().eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    batch = first(splits.test, 8)
    track, lengths = batch["input"], batch["length"]
    hidden = hide_points(lengths, MAX_LENGTH, 0.3, torch.Generator().manual_seed(0))
    valid = torch.arange(MAX_LENGTH) < lengths[:, None]
    assert (~valid).any()  # some trajectories are padded, or the test proves nothing
    with torch.no_grad():
        expected = model(track, lengths, hidden)
        # Garbage, nan included, where the model must not look: padding and hidden points.
        garbage = torch.randn_like(track) * 50 + 100
        garbage[0, -1] = float("nan")
        blind = ~valid | hidden
        changed = model(torch.where(blind[..., None], garbage, track), lengths, hidden)
        assert torch.equal(changed[valid], expected[valid])

        # A trajectory without its padding (a shorter batch) is predicted alike.
        short = int(lengths[0])
        alone = model(track[:1, :short], lengths[:1], hidden[:1, :short])
    # km-scale offsets mapped back to degrees: 1e-6 degrees is about 0.1 m.
    torch.testing.assert_close(alone[0], expected[0, :short], atol=1e-6, rtol=0)


def test_evaluation_hides_the_same_points_every_time_and_leaves_the_global_rng(splits):
    model = tiny_model().eval()
    batch = first(splits.val, 8)
    state = torch.get_rng_state()
    once, again = model.evaluation_step(batch), model.evaluation_step(batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(once.outputs["error_m"], again.outputs["error_m"])
    assert once.losses["loss"] == again.losses["loss"]
    # Training draws new points each step.
    model.train()
    assert model.training_step(batch).losses["loss"] != model.training_step(batch).losses["loss"]


# --- The mask --------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.9])
def test_mask_hides_the_fraction_of_valid_points_and_never_ends_or_padding(fraction):
    torch.manual_seed(0)
    lengths = torch.arange(1, 41).repeat(200)  # every length, 200 times each
    hidden = hide_points(lengths, 40, fraction)
    positions = torch.arange(40)
    assert not hidden[positions >= lengths[:, None] - 1].any()  # last point and padding
    assert not hidden[:, 0].any()
    expected = (fraction * lengths).round().clamp(min=1).minimum((lengths - 2).clamp(min=0))
    assert torch.equal(hidden.sum(1), expected.long())
    # Every point that may be hidden sometimes is (uniform, not always the same ones).
    assert hidden[lengths == 40][:, 1:39].any(0).all()


def test_mask_of_a_seeded_generator_repeats():
    lengths = torch.tensor([5, 24, 17])
    draw = [hide_points(lengths, 24, 0.3, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*draw)


# --- End to end ------------------------------------------------------------------------------


def centre_error_m(split: dict[str, torch.Tensor]) -> float:
    """Mean error of guessing each trajectory's centre for its points that may be hidden
    (all but the ends), averaged per trajectory: what random hiding gives on average."""
    track, lengths = split["input"], split["length"]
    _, means = centre(track, lengths)
    positions = torch.arange(track.shape[1])
    interior = (positions >= 1) & (positions < lengths[:, None] - 1)
    errors = haversine(means[:, None], track)
    return (torch.where(interior, errors, 0).sum(1) / interior.sum(1)).mean().item()


@pytest.mark.slow
def test_a_short_run_learns_to_beat_the_centre_and_test_py_writes_its_errors(
    train, evaluate, tmp_path, splits
):
    argv = [
        "--arch", "trajectory_recovery",
        "--dataset", "trajectories",
        "--data.num-train", "256",
        "--data.num-test", "64",
        "--data.max-length", str(MAX_LENGTH),
        "--epochs", "3",
        # 42 steps: at batch 32 and the default lr 1e-3 its 21 steps stay near the centre.
        "--batch-size", "16",
        "--optim.lr", "3e-3",
        "--device", "cpu",
        "--run-name", "recover",
    ]  # fmt: skip
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "recover"
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {"train_loss", "train_error_m", "val_loss", "val_error_m"} <= set(rows[0])
    val_errors = [float(row["val_error_m"]) for row in rows]
    # Seed 0 gives about 338, 223 and 193 m against a centre error of 338 m.
    assert val_errors[-1] < 0.8 * val_errors[0]
    assert val_errors[-1] < 0.8 * centre_error_m(splits.val)

    assert evaluate(str(run_dir)) == 0
    metrics = pd.read_csv(run_dir / "test" / "test_metrics.csv")
    predictions = pd.read_csv(run_dir / "test" / "test_predictions.csv")
    assert {"loss", "error_m"} <= set(metrics.columns)
    assert len(predictions) == 64 and predictions["error_m"].notna().all()
    # The reported error is the mean of the per-trajectory errors.
    assert predictions["error_m"].mean() == pytest.approx(metrics["error_m"][0], rel=1e-5)
    assert metrics["error_m"][0] < 0.8 * centre_error_m(splits.test)


# --- The config ------------------------------------------------------------------------------


@pytest.mark.slow
def test_config_module_does_not_import_torch():
    code = "import sys, toolbox.models.trajectory; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_default_config_has_no_problems():
    assert TrajectoryRecoveryConfig().problems() == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"width": 30}, ["--model.width is 30", "--model.heads 4", "--model.width 32"]),
        ({"width": 0}, ["--model.width is 0", "positive"]),
        ({"depth": 0}, ["--model.depth is 0", "positive"]),
        ({"heads": -1}, ["--model.heads is -1", "positive"]),
        ({"mlp_ratio": 0}, ["--model.mlp-ratio is 0", "positive"]),
        ({"width": 12}, ["--model.width 12 / --model.heads 4 is 3", "--model.width 16"]),
        (
            {"width": 9, "heads": 1, "positions": "sinusoidal"},
            ["--model.width is 9", "even width"],
        ),
        ({"mask_fraction": 0.0}, ["--model.mask-fraction is 0.0", "(0, 1)", "e.g. 0.3"]),
        ({"mask_fraction": 1.0}, ["--model.mask-fraction is 1.0", "(0, 1)"]),
        ({"dropout": 1.0}, ["--model.dropout is 1.0", "[0, 1)"]),
    ],
)
def test_config_problems_name_the_option_the_value_and_the_fix(changes, expected):
    found = TrajectoryRecoveryConfig(**changes).problems()
    assert len(found) == 1, found
    for fragment in expected:
        assert fragment in found[0]


def test_build_refuses_inputs_that_are_not_trajectories():
    with pytest.raises(UserError, match=r"--arch trajectory_recovery .* shape \(1, 28, 28\)"):
        TrajectoryRecoveryConfig().build(DatasetInfo("classification", (1, 28, 28), 10))
