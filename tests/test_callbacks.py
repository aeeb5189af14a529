"""Callbacks (--callbacks): their hooks' order and arguments, their state across a resume,
stops they ask for, options checked; and step-based training (--max-steps,
--eval-every-steps, --limit-*-batches, --fast-dev-run)."""

from __future__ import annotations

import csv
import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.test_resume import assert_resumes_like_a_straight_run, rows_without_timing
from toolbox.callbacks import CALLBACKS, Callback, CallbackConfig, register_callback

# 320 samples, 10% held out for validation: 288 training samples, 9 batches of 32.
BASE = ["--dataset", "synthetic", "--data.num-train", "320", "--data.num-test", "64"]
BASE += ["--batch-size", "32", "--log-every", "5", "--device", "cpu", "--loggers", "none"]
STEPS_PER_EPOCH = 9


class HookProbe(Callback):
    """Writes down every hook it hears, with the arguments that a test can compare."""

    heard: list[tuple] = []

    def on_fit_start(self, trainer):
        self.heard.append(("fit_start", trainer.state.progress.step))

    def on_epoch_start(self, trainer, epoch_idx):
        self.heard.append(("epoch_start", epoch_idx))

    def on_before_optimizer_step(self, trainer, name):
        grads = [p.grad is not None for p in trainer.model.parameters()]
        self.heard.append(("before_optimizer_step", name, all(grads)))

    def on_step_end(self, trainer, step):
        self.heard.append(("step_end", step))

    def on_evaluation_end(self, trainer, row, improved):
        self.heard.append(("evaluation_end", row["epoch"], row["step"], "val_loss" in row))

    def on_epoch_end(self, trainer, epoch):
        self.heard.append(("epoch_end", epoch))

    def on_checkpoint(self, trainer, name, path):
        self.heard.append(("checkpoint", name, path.exists()))

    def on_fit_end(self, trainer, status, reason, error):
        self.heard.append(("fit_end", status))


@register_callback("test_hook_probe")
@dataclass(frozen=True)
class HookProbeConfig(CallbackConfig):
    def build(self) -> Callback:
        return HookProbe()


class StepCounter(Callback):
    """Counts the steps it saw and stops the run at a given count; its count is its state."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at, self.steps_seen = stop_at, 0

    def on_step_end(self, trainer, step):
        self.steps_seen += 1
        assert self.steps_seen == step  # resumed or not, it has seen every step once

    def on_epoch_end(self, trainer, epoch):
        if self.stop_at and self.steps_seen >= self.stop_at:
            trainer.request_stop(f"counted {self.steps_seen} steps")
        trainer.log_values({"steps_seen": float(self.steps_seen)}, trainer.state.progress.step)

    def state_dict(self):
        return {"steps_seen": self.steps_seen}

    def load_state_dict(self, state):
        self.steps_seen = state["steps_seen"]


@register_callback("test_step_counter")
@dataclass(frozen=True)
class StepCounterConfig(CallbackConfig):
    stop_at: int = 0

    def build(self) -> Callback:
        return StepCounter(self.stop_at)


@contextmanager
def registered_for_this_test(name: str) -> Iterator[None]:
    """A plugin file's callback is forgotten afterwards, as by a new process: other tests
    may drop its module (tests.test_plugins.forget), whose class tyro could not read then."""
    try:
        yield
    finally:
        CALLBACKS._entries.pop(name, None)


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_hooks_are_heard_in_order_with_their_arguments(train, tmp_path):
    HookProbe.heard.clear()
    argv = [*BASE, "--epochs", "2", "--callbacks", "test_hook_probe", "--run-name", "probe"]
    assert train(*argv) == 0
    heard = HookProbe.heard
    assert heard[0] == ("fit_start", 0) and heard[-1] == ("fit_end", "finished")
    for epoch_idx in range(2):
        start = heard.index(("epoch_start", epoch_idx))
        steps = range(epoch_idx * STEPS_PER_EPOCH + 1, (epoch_idx + 1) * STEPS_PER_EPOCH + 1)
        expected = []
        for step in steps:
            expected += [("before_optimizer_step", "main", True), ("step_end", step)]
        expected += [
            ("evaluation_end", epoch_idx + 1, steps[-1], True),
            ("checkpoint", "model_best.pth.tar", True),
            ("checkpoint", "checkpoint.pth.tar", True),
            ("epoch_end", epoch_idx + 1),
        ]
        # The best checkpoint is written only when the monitored value improved.
        got = heard[start + 1 : start + 1 + len(expected)]
        if ("checkpoint", "model_best.pth.tar", True) not in got:
            expected.remove(("checkpoint", "model_best.pth.tar", True))
            got = heard[start + 1 : start + 1 + len(expected)]
        assert got == expected


def test_a_callbacks_state_continues_across_a_resume(train, tmp_path, signal_at_step):
    argv = [*BASE, "--epochs", "3", "--callbacks", "test_step_counter", "--run-name", "count"]
    signal_at_step(13)
    assert train(*argv) == 128 + signal.SIGTERM
    run_dir = tmp_path / "outputs" / "count"
    saved = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert saved["callbacks"] == {"test_step_counter": {"steps_seen": 13}}
    # on_step_end asserts that the resumed count goes on from 13 to every later step.
    assert train("--resume", str(run_dir / "checkpoint.pth.tar")) == 0
    final = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert final["callbacks"]["test_step_counter"]["steps_seen"] == 3 * STEPS_PER_EPOCH


def test_a_callback_that_asks_to_stop_ends_the_run_finished(train, tmp_path):
    argv = [*BASE, "--epochs", "5", "--callbacks", "test_step_counter", "--run-name", "stop"]
    assert train(*argv, "--callback.test-step-counter.stop-at", "10") == 0
    run_dir = tmp_path / "outputs" / "stop"
    data = record(run_dir)
    # The stop is asked at the end of epoch 2 (18 steps seen >= 10): honoured there.
    assert data["status"] == "finished" and data["epochs_done"] == 2
    assert data["stop_reason"] == "counted 18 steps"
    log = (run_dir / "training.log").read_text()
    assert "stopping early: counted 18 steps" in log
    assert "step 9 steps_seen 9" in log  # log_values reaches training.log


def test_early_stopping_carries_its_count_across_a_resume(train, tmp_path):
    # Heavy label smoothing on resume makes every later evaluation worse than the best.
    early = ["--callbacks", "early_stopping", "--callback.early-stopping.patience", "3"]
    assert train(*BASE, "--epochs", "2", *early, "--run-name", "es") == 0
    run_dir = tmp_path / "outputs" / "es"
    last = str(run_dir / "checkpoint.pth.tar")
    smoothing = ["--loss.label-smoothing", "0.9"]
    assert train("--resume", last, "--epochs", "3", *smoothing) == 0  # 1 worse evaluation
    state = torch.load(last, weights_only=True)["callbacks"]["early_stopping"]
    assert state["evaluations_since_best"] == 1 and state["best_epoch"] == 2
    assert train("--resume", last, "--epochs", "10", *smoothing) == 0  # 2 more: stop
    data = record(run_dir)
    assert data["epochs_done"] == 5 and "has not improved for 3 evaluations" in data["stop_reason"]


def test_a_config_from_before_early_stopping_was_a_callback_resumes_with_it(train, tmp_path):
    assert train(*BASE, "--epochs", "2", "--run-name", "old") == 0
    run_dir = tmp_path / "outputs" / "old"
    path = run_dir / "checkpoint.pth.tar"
    state = torch.load(path, weights_only=True)
    for key in ("callbacks", "callback"):
        del state["config"][key]
    state["config"].update(early_stop_patience=1, early_stop_lr=0.0)
    torch.save(state, path)
    assert train("--resume", str(path), "--epochs", "6", "--loss.label-smoothing", "0.9") == 0
    data = record(run_dir)
    assert (
        data["epochs_done"] == 3 and "--callback.early-stopping.patience 1" in data["stop_reason"]
    )


def test_a_plugin_file_adds_a_callback(train, tmp_path):
    plugin = tmp_path / "my_callbacks.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "from toolbox.callbacks import CALLBACKS, Callback, CallbackConfig, register_callback\n\n"
        "class Marker(Callback):\n"
        "    def on_fit_end(self, trainer, status, reason, error):\n"
        "        (trainer.run_dir / 'marker.txt').write_text(status)\n\n"
        "@register_callback('test_plugin_marker')\n"
        "@dataclass(frozen=True)\n"
        "class MarkerConfig(CallbackConfig):\n"
        "    def build(self):\n"
        "        return Marker()\n"
    )
    argv = [*BASE, "--epochs", "1", "--plugins", str(plugin), "--callbacks", "test_plugin_marker"]
    with registered_for_this_test("test_plugin_marker"):
        assert train(*argv, "--run-name", "plug") == 0
    assert (tmp_path / "outputs" / "plug" / "marker.txt").read_text() == "finished"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--callbacks", "nope"], "invalid choice 'nope' for argument '--callbacks'"),
        (["--max-steps", "10", "--epochs", "2"], "--epochs 2 and --max-steps 10 both say"),
        (["--fast-dev-run", "--epochs", "2"], "--epochs 2 and --fast-dev-run both say"),
        (
            ["--callback.grad-norm.every", "5"],
            "--callback.grad-norm.every given, but --callbacks does not name grad_norm",
        ),
        (
            ["--callbacks", "early_stopping", "--callback.early-stopping.patience", "-1"],
            "--callback.early-stopping.patience is -1",
        ),
        (["--callbacks", "early_stopping", "early_stopping"], "names a callback twice"),
        (["--max-steps", "-3"], "--max-steps is -3"),
    ],
)
def test_bad_callback_and_length_options_get_one_message(train, tmp_path, capsys, argv, message):
    try:
        code = train(*BASE, *argv)
    except SystemExit as parser_exit:  # tyro's own parse errors exit from inside it
        code = parser_exit.code
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()  # nothing was started


# --- step-based training -----------------------------------------------------------------


def test_max_steps_with_evaluations_every_k_steps(train, tmp_path):
    argv = [*BASE, "--max-steps", "25", "--eval-every-steps", "10", "--run-name", "steps"]
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "steps"
    table = rows(run_dir)
    assert [int(row["step"]) for row in table] == [10, 20, 25]
    assert [int(row["epoch"]) for row in table] == [1, 2, 3]  # completed epochs (9 steps each)
    # The cosine schedule runs over the 25 steps: down to 0 at the last one.
    assert float(table[0]["lr"]) > float(table[1]["lr"]) > float(table[2]["lr"]) == 0.0
    final = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert final["progress"]["step"] == 25
    assert "step 20/25" in (run_dir / "training.log").read_text()
    # The training losses of a row are the means since the previous evaluation.
    assert all(float(row["train_loss"]) > 0 for row in table)
    # A finished --max-steps run says so when asked to go on.
    assert train("--resume", str(run_dir / "checkpoint.pth.tar")) == 2


def test_a_step_based_run_resumes_exactly_mid_epoch(train, tmp_path, signal_at_step, monkeypatch):
    argv = [*BASE, "--max-steps", "22", "--eval-every-steps", "4", "--model.dropout", "0.3"]
    outputs = tmp_path / "outputs"  # stopped after step 13: between two evaluations
    assert_resumes_like_a_straight_run(train, outputs, argv, 13, signal_at_step, monkeypatch)


def test_limits_cut_the_epochs_and_evaluations_short(train, tmp_path):
    argv = [*BASE, "--epochs", "2", "--limit-train-batches", "3", "--limit-val-batches", "1"]
    assert train(*argv, "--run-name", "limited") == 0
    table = rows(tmp_path / "outputs" / "limited")
    assert [int(row["step"]) for row in table] == [3, 6]
    log = (tmp_path / "outputs" / "limited" / "training.log").read_text()
    assert "limited to 3 training batches per epoch and 1 validation batches" in log


def test_fast_dev_run_is_one_epoch_of_two_batches(train, tmp_path):
    assert train(*BASE, "--fast-dev-run", "--run-name", "dev") == 0
    run_dir = tmp_path / "outputs" / "dev"
    assert [int(row["step"]) for row in rows(run_dir)] == [2]
    assert record(run_dir)["epochs"] == 1


def test_training_rows_are_the_same_with_and_without_step_evaluations_at_epoch_ends(
    train, tmp_path
):
    # Evaluating every 9 steps is evaluating at each epoch's end: the same rows.
    assert train(*BASE, "--epochs", "2", "--run-name", "epochs") == 0
    assert train(*BASE, "--max-steps", "18", "--eval-every-steps", "9", "--run-name", "k") == 0
    outputs = tmp_path / "outputs"
    assert rows_without_timing(outputs / "epochs") == rows_without_timing(outputs / "k")


def test_the_readme_callback_in_ten_lines_works_as_a_plugin(train, tmp_path):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Custom training logic") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    plugin = tmp_path / "my_callbacks.py"
    plugin.write_text(code)
    argv = [*BASE, "--epochs", "4", "--plugins", str(plugin), "--callbacks", "stop_at_accuracy"]
    with registered_for_this_test("stop_at_accuracy"):
        assert train(*argv, "--callback.stop-at-accuracy.target", "0", "--run-name", "ten") == 0
    data = record(tmp_path / "outputs" / "ten")
    assert data["epochs_done"] == 1 and data["stop_reason"] == "val_accuracy reached 0.0"


RANKED_PLUGIN = """
from dataclasses import dataclass
from toolbox.callbacks import CALLBACKS, Callback, CallbackConfig, register_callback

class Marks(Callback):
    def __init__(self, stop_at_epoch):
        self.stop_at_epoch = stop_at_epoch
    def on_fit_end(self, trainer, status, reason, error):
        name = f"{type(self).__name__}{trainer.dist.rank}.txt"
        (trainer.run_dir / name).write_text(str(trainer.state.progress.epoch))
    def on_epoch_end(self, trainer, epoch):
        if epoch == self.stop_at_epoch:
            trainer.request_stop(f"asked on rank {trainer.dist.rank}")

class EveryRank(Marks):
    all_ranks = True

@register_callback("test_writer_rank")
@dataclass(frozen=True)
class WriterRankConfig(CallbackConfig):
    stop_at_epoch: int = 0
    def build(self):
        return Marks(self.stop_at_epoch)

@register_callback("test_every_rank")
@dataclass(frozen=True)
class EveryRankConfig(CallbackConfig):
    def build(self):
        return EveryRank(0)
"""


@pytest.mark.slow
def test_under_torchrun_callbacks_run_on_the_writing_rank_unless_declared_for_all(tmp_path):
    from tests.test_distributed import torchrun

    plugin = tmp_path / "ranked.py"
    plugin.write_text(RANKED_PLUGIN)
    argv = [*BASE, "--epochs", "5", "--output-dir", str(tmp_path), "--run-name", "ranked"]
    argv += ["--plugins", str(plugin), "--callbacks", "test_writer_rank", "test_every_rank"]
    # Asked for on rank 0 alone, after epoch 2: every rank stops there, none waits forever.
    result = torchrun(*argv, "--callback.test-writer-rank.stop-at-epoch", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "ranked"
    marks = sorted(path.name for path in run_dir.glob("*.txt"))
    assert marks == ["EveryRank0.txt", "EveryRank1.txt", "Marks0.txt"]
    assert all((run_dir / name).read_text() == "2" for name in marks)
    assert record(run_dir)["stop_reason"] == "asked on rank 0"


def test_a_saved_config_loads_where_an_unselected_callback_is_not_registered():
    from toolbox.config.plain import from_plain, to_plain
    from toolbox.config.training import TrainingConfig
    from toolbox.errors import UserError

    plain = to_plain(TrainingConfig())
    plain["callback"]["gone_callback"] = {"level": 1}  # saved where it was registered
    assert from_plain(plain).callbacks == ()
    plain["callbacks"] = ["gone_callback"]  # selected, it must be there
    with pytest.raises(UserError, match="gone_callback"):
        from_plain(plain)
