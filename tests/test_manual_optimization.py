"""Models that drive several optimizers themselves (configure_optimizers): each optimizer
trains on its own loss, accumulates, clips, schedules, resumes and averages over ranks on
its own, and what cannot apply to such a model is refused with one message."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tests.test_distributed import torchrun, weights
from tests.test_plugins import forget

# Two linear heads on the flattened input, zero-initialised (so that a run's weights are
# what its steps made them), each with its own optimizer. The second head's logits add the
# first's, so that the second loss reaches the first head's weights unless its backward
# keeps to the second optimizer's parameters.
PLUGIN = '''
import math
from dataclasses import dataclass

import torch
from torch import nn

from toolbox.models import ModelConfig, register_model
from toolbox.models.steps import MAIN_LOSS, NamedOptimizer, StepOutput
from toolbox.optimizers.sgd import SGD


class TwoHeads(nn.Module):
    loss_names = (MAIN_LOSS, "first", "second")

    def __init__(self, width, classes, step_name, detach_first, second_lr):
        super().__init__()
        self.first = nn.Linear(width, classes)
        self.second = nn.Linear(width, classes)
        for parameter in self.parameters():
            nn.init.zeros_(parameter)
        self.step_name, self.detach_first, self.second_lr = step_name, detach_first, second_lr

    def configure_optimizers(self):
        second = SGD(lr=self.second_lr) if self.second_lr else None
        return {
            "first": NamedOptimizer(self.first.parameters()),
            "second": NamedOptimizer(self.second.parameters(), second),
        }

    def losses(self, batch):
        inputs, target = batch["input"].flatten(1), batch["target"]
        first = self.first(inputs)
        coupled = first.detach() if self.detach_first else first
        first_loss = nn.functional.cross_entropy(first, target)
        second_loss = nn.functional.cross_entropy(self.second(inputs) + coupled, target)
        losses = {MAIN_LOSS: first_loss + second_loss, "first": first_loss}
        return StepOutput({**losses, "second": second_loss})

    def training_step(self, batch, optimization):
        result = self.losses(batch)
        optimization.backward(result.losses["first"], "first")
        optimization.step("first")
        optimization.backward(result.losses["second"], "second")
        optimization.step(self.step_name)
        return result

    def evaluation_step(self, batch):
        return self.losses(batch)


@register_model("two_heads")
@dataclass(frozen=True)
class TwoHeadsConfig(ModelConfig):
    """Two linear heads, each trained by its own optimizer."""

    own_steps = True

    step_name: str = "second"
    """The name the training step steps the second head's optimizer by."""
    detach_first: bool = False
    """Detach the first head's logits where the second loss adds them."""
    second_lr: float = 0.0
    """The second head's own SGD rate (0: the run's --optim, as the first's)."""

    def build(self, info):
        width = math.prod(info.input_shape)
        return TwoHeads(width, info.num_outputs, self.step_name, self.detach_first, self.second_lr)
'''

# 288 training samples: 9 batches of 32, 18 of 16, 36 of 8.
FAST = [*TINY, "--metrics", "--optimizer", "adam", "--epochs", "2"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("plugin") / "two_heads.py"
    path.write_text(PLUGIN)
    yield ["--plugins", str(path), "--arch", "two_heads"]
    forget("two_heads")


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)


def assert_close_weights(run_a: Path, run_b: Path) -> None:
    # Float32 sums in another order: about 1e-8 apart here.
    for key, value in weights(run_a).items():
        torch.testing.assert_close(weights(run_b)[key], value, rtol=0, atol=1e-6)


def test_each_optimizer_steps_on_its_own_loss_only(train, tmp_path, plugin):
    """The second loss reaches the first head too; its backward leaves the first head's
    gradients alone, so detaching that path changes nothing."""
    assert train(*plugin, *FAST, "--run-name", "coupled") == 0
    assert train(*plugin, *FAST, "--model.detach-first", "--run-name", "detached") == 0
    coupled, detached = tmp_path / "outputs" / "coupled", tmp_path / "outputs" / "detached"
    for key, value in weights(coupled).items():
        assert torch.equal(weights(detached)[key], value), key
    named = checkpoint(coupled)["named_optimizers"]
    assert list(named) == ["first", "second"]
    for states in named.values():  # both stepped at every one of the run's 2 x 9 steps
        assert [state["step"].item() for state in states["optimizer"]["state"].values()] == [18] * 2
    assert weights(coupled)["first.weight"].abs().sum() > 0


def test_accumulating_two_batches_of_8_steps_each_optimizer_as_a_batch_of_16(
    train, tmp_path, plugin
):
    assert train(*plugin, *FAST, "--batch-size", "16", "--run-name", "whole") == 0
    assert train(*plugin, *FAST, "--batch-size", "8", "--grad-accum", "2", "--run-name", "acc") == 0
    assert checkpoint(tmp_path / "outputs" / "acc")["progress"]["step"] == 2 * 18
    assert_close_weights(tmp_path / "outputs" / "whole", tmp_path / "outputs" / "acc")


def test_clip_grad_clips_each_optimizer_by_its_own_gradients(train, tmp_path, plugin):
    """One plain SGD step of rate 1 from zero weights: each head moves by exactly the
    clipping norm (clipped together, the two would share it)."""
    sgd = ["--optimizer", "sgd", "--optim.lr", "1", "--optim.momentum", "0"]
    sgd += ["--optim.no-nesterov", "--optim.weight-decay", "0", "--scheduler", "none"]
    one_step = ["--batch-size", "288", "--epochs", "1"]  # the whole training split at once
    argv = [*plugin, *FAST, *sgd, *one_step, "--clip-grad", "0.001"]
    assert train(*argv, "--run-name", "clipped") == 0
    trained = weights(tmp_path / "outputs" / "clipped")
    for head in ("first", "second"):
        moved = torch.cat([trained[f"{head}.weight"].flatten(), trained[f"{head}.bias"]])
        assert moved.norm().item() == pytest.approx(0.001, rel=1e-4), head


def test_schedulers_stepped_by_evaluations_follow_the_monitored_loss_each(train, tmp_path, plugin):
    assert train(*plugin, *FAST, "--scheduler", "plateau", "--run-name", "plateau") == 0
    named = checkpoint(tmp_path / "outputs" / "plateau")["named_optimizers"]
    assert [states["scheduler"]["last_epoch"] for states in named.values()] == [2, 2]


def test_a_resume_with_a_new_rate_rescales_the_optimizers_that_follow_optim(
    train, tmp_path, plugin
):
    argv = [*plugin, *FAST, "--scheduler", "none", "--optim.lr", "0.01", "--epochs", "1"]
    assert train(*argv, "--model.second-lr", "0.05", "--run-name", "rates") == 0
    run_dir = tmp_path / "outputs" / "rates"
    resume = ["--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "2"]
    assert train(*resume, "--optim.lr", "0.02") == 0
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    rates = [[float(row[name]) for name in ("lr", "lr_first", "lr_second")] for row in rows]
    # The second head's own SGD keeps its rate; lr is the first optimizer's.
    assert rates == [[0.01, 0.01, 0.05], [0.02, 0.02, 0.05]]


def test_a_single_optimizer_checkpoint_without_named_states_still_resumes(train, tmp_path):
    """Checkpoints from before several optimizers had no "named_optimizers" entry."""
    assert train(*TINY, "--epochs", "1", "--run-name", "old") == 0
    path = tmp_path / "outputs" / "old" / "checkpoint.pth.tar"
    saved = torch.load(path, weights_only=True)
    assert saved.pop("named_optimizers") is None
    torch.save(saved, path)
    assert train("--resume", str(path), "--epochs", "2") == 0
    assert checkpoint(path.parent)["progress"]["epoch"] == 2


def test_an_unknown_optimizer_name_is_one_message(train, plugin, capsys):
    assert train(*plugin, *FAST, "--model.step-name", "critic") == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "the training step named the optimizer 'critic'" in error
    assert "the model declares 'first', 'second'" in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    "flags", [["--nan-policy", "skip"], ["--compile"]], ids=["skip", "compile"]
)
def test_what_cannot_undo_or_trace_the_models_own_steps_is_refused(train, plugin, capsys, flags):
    assert train(*plugin, *FAST, *flags) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert f"{' '.join(flags)} is not available for --arch two_heads" in error
    assert "drives its own optimizers" in error


@pytest.mark.slow
def test_two_processes_average_each_optimizer_like_one_with_twice_the_batch(
    train, tmp_path, plugin
):
    """Not in DDP: each optimizer all-reduces its own gradients as it steps."""
    common = [*plugin, *FAST, "--output-dir", str(tmp_path)]
    two = torchrun(*common, "--batch-size", "8", "--run-name", "two")
    assert two.returncode == 0, two.stdout + two.stderr
    assert train(*common, "--batch-size", "16", "--run-name", "one") == 0
    assert_close_weights(tmp_path / "one", tmp_path / "two")
    assert checkpoint(tmp_path / "two")["progress"]["step"] == 2 * 18


def test_test_py_evaluates_a_model_whose_evaluation_step_gives_no_per_sample_outputs(
    train, evaluate, tmp_path, plugin
):
    assert train(*plugin, *FAST, "--epochs", "1", "--run-name", "plain") == 0
    run_dir = tmp_path / "outputs" / "plain"
    assert evaluate(str(run_dir)) == 0
    evaluation = run_dir / "test"
    with open(evaluation / "test_metrics.csv", newline="") as file:
        assert {"loss", "first", "second"} <= set(next(csv.DictReader(file)))
    assert not (evaluation / "test_predictions.csv").exists()
