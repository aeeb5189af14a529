"""Checkpoint safety: atomic writes under kill -9, weights-only loading, clear errors for
truncated, corrupt, foreign and mis-shaped files, --init-from, compiled models, full disks."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import pathlib
import re
import shutil
import stat
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import toolbox.records.checkpoint
from tests.conftest import TINY, run_main
from toolbox.errors import UserError
from toolbox.records.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_model_state,
    remove_stale_temporaries,
    save_atomic,
)


def checkpoint_state(model: dict, **extra) -> dict:
    """A state shaped like the trainer's (every key a checkpoint holds), around ``model``."""
    state = {"format": FORMAT, "config": {}, "model": model, "optimizer": {}, "scheduler": {}}
    state.update(scaler={}, loader={}, rng={}, progress={}, **extra)
    return state


def flat(text: str) -> str:
    """Console output with its line breaks undone, to search for a message."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """One finished 1-epoch run (mlp 64 -> 256 -> 10 on synthetic), shared read-only; tests
    that change it work on a copy."""
    from toolbox.cli.main import train_main

    out = tmp_path_factory.mktemp("source")
    argv = [*TINY, "--epochs", "1", "--output-dir", str(out), "--run-name", "source"]
    assert run_main(train_main, argv) == 0
    return out / "source"


@pytest.fixture
def run_copy(source_run, tmp_path) -> Path:
    return Path(shutil.copytree(source_run, tmp_path / "copy"))


# --- 1. atomic writes under kill -9 -----------------------------------------------------------

TEMPORARY = re.compile(r"\.checkpoint\.pth\.tar\..+")


def _write_versions(path: Path, tensors: list[torch.Tensor], first: int, written) -> None:
    """Child process: write version after version to ``path`` as fast as it can; every tensor
    holds the version number. ``written`` is the last version whose save_atomic returned."""
    torch.set_num_threads(1)  # no OpenMP pool in a forked child
    version = first
    while True:
        for tensor in tensors:
            tensor.fill_(version)
        save_atomic(checkpoint_state(dict(enumerate(tensors)), version=version), path)
        written.value = version
        version += 1


def _check_consistent(path: Path) -> int:
    state = load_checkpoint(path)  # weights_only=True
    version = state["version"]
    assert len(state["model"]) == 4
    for tensor in state["model"].values():
        low, high = torch.aminmax(tensor)
        assert low.item() == high.item() == version, (version, low.item(), high.item())
    return version


@pytest.mark.slow
def test_kill_9_during_writes_leaves_the_previous_checkpoint_loadable(tmp_path):
    # About 100 MB: four 24 MiB tensors, so that one write takes a measurable time.
    tensors = [torch.zeros(6 * 2**20) for _ in range(4)]
    path = tmp_path / "checkpoint.pth.tar"
    timings = []
    for version in (0, 0):
        started = time.perf_counter()
        save_atomic(checkpoint_state(dict(enumerate(tensors)), version=version), path)
        timings.append(time.perf_counter() - started)
    write_s = max(timings)
    # Files that remove_stale_temporaries must leave alone.
    decoys = {"notes.txt", "model_best.pth.tar", "checkpoint_e1.pth.tar", "checkpoint.pth.tar.bak"}
    decoys |= {".hidden", ".config.json.tmp"}
    for name in decoys:
        (tmp_path / name).write_text("keep me")
    (tmp_path / ".checkpoint.pth.tar.dir").mkdir()
    expected = decoys | {".checkpoint.pth.tar.dir", "checkpoint.pth.tar"}

    context = multiprocessing.get_context("fork")
    kills = 12
    last_version, torn_writes = 0, 0
    for kill in range(kills):
        first = (kill + 1) * 1000
        written = context.Value("q", -1, lock=False)
        child = context.Process(target=_write_versions, args=(path, tensors, first, written))
        child.start()
        try:
            deadline = time.monotonic() + 30
            while written.value < first:  # one whole write, then kill inside the next one
                assert child.is_alive() and time.monotonic() < deadline, "writer stalled"
                time.sleep(0.002)
            # Stratified delays: the kills land across the whole duration of one write.
            time.sleep(write_s * (kill + 0.5) / kills)
        finally:
            child.kill()
            child.join()
        assert child.exitcode == -9

        version = _check_consistent(path)
        # The file holds the last completed write, or the one the kill interrupted after
        # its rename; never an older version, never a torn one.
        assert written.value <= version <= written.value + 1, (version, written.value)
        assert version >= last_version
        last_version = version

        names = {entry.name for entry in tmp_path.iterdir()}
        leftovers = names - expected
        assert all(TEMPORARY.fullmatch(name) for name in leftovers), leftovers
        torn_writes += bool(leftovers)
        removed = remove_stale_temporaries(tmp_path)
        assert {entry.name for entry in removed} == leftovers
        assert {entry.name for entry in tmp_path.iterdir()} == expected
        assert all((tmp_path / name).read_text() == "keep me" for name in decoys)
    assert torn_writes >= kills // 2, "the kills should mostly land inside a write"
    assert _check_consistent(path) == last_version


def test_atomic_writes_respect_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        save_atomic(checkpoint_state({}), tmp_path / "checkpoint.pth.tar")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(umask)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o644
    assert stat.S_IMODE((tmp_path / "checkpoint.pth.tar").stat().st_mode) == plain


def test_one_atomic_write_serves_every_file_and_is_durable(tmp_path, monkeypatch):
    from toolbox.data import atomic as data_atomic
    from toolbox.data import cache
    from toolbox.records import atomic, curves, metrics_table, run_record, tensorboard

    # Every writer of the toolbox uses the one function (the records through records.atomic).
    assert atomic.write_atomically is data_atomic.write_atomically
    for module in (toolbox.records.checkpoint, cache, curves, tensorboard):
        assert module.write_atomically is data_atomic.write_atomically
    assert metrics_table.write_text is run_record.write_text is data_atomic.write_text
    assert run_record.write_json is data_atomic.write_json

    synced = []
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(os.fstat(descriptor).st_mode)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    umask = os.umask(0o027)
    try:
        atomic.write_json(tmp_path / "run.json", {"a": [1, 2]})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "run.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    mode = stat.S_IMODE((tmp_path / "run.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o640
    # The file's bytes, then the directory's entry: both reach the disk.
    assert [stat.S_ISREG(mode) for mode in synced] == [True, False]
    assert stat.S_ISDIR(synced[1])


@pytest.mark.parametrize("by_path", [False, True], ids=["file", "path"])
@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, failure, by_path):
    from toolbox.records.atomic import write_atomically

    path = tmp_path / "metrics.csv"
    path.write_text("old\n")

    def write(target):
        if by_path:
            Path(target).write_bytes(b"half of the new")
        else:
            target.write(b"half of the new")
        raise failure

    with pytest.raises(type(failure)):
        write_atomically(path, write, by_path=by_path)
    assert path.read_text() == "old\n"
    assert [entry.name for entry in tmp_path.iterdir()] == ["metrics.csv"]


def test_an_atomic_write_by_path_is_synced_and_respects_the_umask(tmp_path, monkeypatch):
    from toolbox.records.atomic import write_atomically

    synced = []
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(stat.S_ISREG(os.fstat(descriptor).st_mode))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    umask = os.umask(0o022)
    try:
        path = tmp_path / "toolbox-mnist-0123.pt"
        write_atomically(
            path, lambda temporary: torch.save({"x": torch.ones(3)}, temporary), by_path=True
        )
    finally:
        os.umask(umask)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert synced == [True, False]  # the file, then its directory
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]


def test_stale_temporaries_of_every_record_are_removed_and_nothing_else(tmp_path):
    from toolbox.records.atomic import temporary_path

    ours = [temporary_path(tmp_path / name) for name in ("run.json", "metrics.csv", "curves.png")]
    ours.append(temporary_path(tmp_path / "checkpoint_e3.pth.tar"))  # keep_copy's link
    older = [".checkpoint.pth.tar.k3j_d8x", ".checkpoint_e2.pth.tar.link"]
    older.append(".curves.png.4242.0a1b2c3d.tmp")
    assert len({path.name for path in ours}) == 4
    for path in [*ours, *(tmp_path / name for name in older)]:
        path.write_text("torn")
    keep = {"run.json", ".config.json.tmp", ".run.json.0123456789abcdef", "notes.tmp"}
    keep |= {".x.0123456789abcdeg.tmp"}  # not hexadecimal
    for name in keep:
        (tmp_path / name).write_text("keep me")
    (tmp_path / temporary_path(tmp_path / "dir").name).mkdir()  # a directory is left alone
    removed = {path.name for path in remove_stale_temporaries(tmp_path)}
    assert removed == {path.name for path in ours} | set(older)
    assert {entry.name for entry in tmp_path.iterdir() if entry.is_file()} == keep


@pytest.mark.slow
def test_the_atomic_write_and_the_background_drawer_import_no_torch():
    import subprocess
    import sys

    from tests.conftest import REPO

    check = (
        "import sys\n"
        "import toolbox.data.atomic, toolbox.records.atomic, toolbox.records.background\n"
        "import toolbox.records.curves, toolbox.records.durations\n"
        "print(','.join(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", result.stdout


# --- 2. weights_only loading refuses pickled code ----------------------------------------------


class _Payload:
    """Pickles as a call of Path.touch(marker): unpickling it runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_and_runs_no_code(tmp_path, train, evaluate, capsys):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil" / "checkpoint.pth.tar"
    path.parent.mkdir()
    torch.save(checkpoint_state({"0.weight": _Payload(marker)}), path)

    with pytest.raises(UserError, match="could run code, so it is refused") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert not marker.exists()

    for call in (
        lambda: train("--resume", str(path)),
        lambda: evaluate(str(path)),
        lambda: evaluate(str(path.parent), "--checkpoint", "last"),
        lambda: train(*TINY, "--init-from", str(path), output_dir=tmp_path / "outputs"),
    ):
        assert call() == 2
        err = flat(capsys.readouterr().err)
        assert str(path) in err and "could run code, so it is refused" in err, err
        assert not marker.exists()
    assert not (tmp_path / "outputs").exists()  # refused before a run directory was made

    # The file really is malicious: an unsafe load runs its code.
    torch.load(path, weights_only=False)
    assert marker.exists()


# --- 3. truncated, corrupt or foreign files ----------------------------------------------------


def _valid_bytes() -> bytes:
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 10))
    buffer = io.BytesIO()
    torch.save(checkpoint_state(model.state_dict()), buffer)
    return buffer.getvalue()


def _foreign_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    return buffer.getvalue()


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


BAD_FILES = {
    "empty": lambda valid: b"",
    "first-10-bytes": lambda valid: valid[:10],
    "first-half": lambda valid: valid[: len(valid) // 2],
    "all-but-last-byte": lambda valid: valid[:-1],
    "random-bytes": lambda valid: os.urandom(4096),
    "text": lambda valid: b'{"epoch": 3}\n',
    "zip-not-torch": lambda valid: _foreign_zip(),
    "saved-list": lambda valid: _saved([1, 2, 3]),
    "state-dict-without-marker": lambda valid: _saved(nn.Linear(4, 2).state_dict()),
    "other-format-marker": lambda valid: _saved({"format": "something.else", "model": {}}),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_file_gets_a_clear_error_naming_it(tmp_path, kind):
    path = tmp_path / "checkpoint.pth.tar"
    path.write_bytes(BAD_FILES[kind](_valid_bytes()))
    with pytest.raises(UserError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    assert "not a loadable checkpoint" in message or "not a toolbox checkpoint" in message


def test_truncated_checkpoint_through_the_command_line(run_copy, train, evaluate, capsys):
    path = run_copy / "checkpoint.pth.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    assert train("--resume", str(path), "--epochs", "3") == 2
    assert str(path) in flat(capsys.readouterr().err)
    assert evaluate(str(path)) == 2
    assert str(path) in flat(capsys.readouterr().err)


def test_corrupted_tensor_bytes_get_a_clear_error(tmp_path):
    values = torch.arange(4096, dtype=torch.float32)
    path = tmp_path / "checkpoint.pth.tar"
    path.write_bytes(_saved(checkpoint_state({"values": values})))
    assert torch.equal(load_checkpoint(path)["model"]["values"], values)  # intact, it loads
    data = bytearray(path.read_bytes())
    start = data.find(values.numpy().tobytes())
    assert start > 0
    data[start + 8000 : start + 8008] = b"\xff" * 8  # a bit-rotted sector inside the tensor
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=re.escape(str(path))):
        load_checkpoint(path)


# --- 4. shapes that do not match the config ----------------------------------------------------


def _rewrite_hidden_sizes(path: Path, sizes: list[int]) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["config"]["model"]["hidden_sizes"] == [256]
    state["config"]["model"]["hidden_sizes"] = sizes
    torch.save(state, path)


def test_resume_with_mismatched_shapes_lists_the_keys(run_copy, train, capsys):
    path = run_copy / "checkpoint.pth.tar"
    _rewrite_hidden_sizes(path, [32])
    before = {name: (run_copy / name).read_bytes() for name in ("training.log", "metrics.csv")}
    assert train("--resume", str(path), "--epochs", "3") == 2
    err = flat(capsys.readouterr().err)
    assert f"--resume {path}" in err
    for key in ("1.weight (256, 64) vs (32, 64)", "1.bias (256,) vs (32,)"):
        assert key in err, err
    assert "4.weight (10, 256) vs (10, 32)" in err, err
    assert "4.bias" not in err  # it fits
    # Refused before anything in the run directory was touched.
    assert {name: (run_copy / name).read_bytes() for name in before} == before
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]


def test_test_py_with_mismatched_shapes_lists_the_keys(run_copy, evaluate, capsys):
    path = run_copy / "checkpoint.pth.tar"
    _rewrite_hidden_sizes(path, [32])
    assert evaluate(str(path)) == 2
    err = flat(capsys.readouterr().err)
    assert str(path) in err and "1.weight (256, 64) vs (32, 64)" in err


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.BatchNorm1d(4))


def _other_weights() -> dict[str, torch.Tensor]:
    """A state_dict for _small_model with one mis-shaped, one missing and one extra key."""
    torch.manual_seed(1)
    weights = dict(_small_model().state_dict())
    weights["2.weight"] = torch.randn(5, 16)  # the model has (4, 16)
    del weights["3.running_var"]
    weights["5.weight"] = torch.randn(3)  # not in the model
    return weights


def test_load_model_state_strict_lists_every_problem():
    model = _small_model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(UserError) as caught:
        load_model_state(model, _other_weights(), "--resume run/checkpoint.pth.tar", strict=True)
    message = str(caught.value)
    assert message.startswith("--resume run/checkpoint.pth.tar: ")
    assert "2.weight (5, 16) vs (4, 16)" in message
    assert "the model has 3.running_var but the checkpoint does not" in message
    assert "the checkpoint has 5.weight but the model does not" in message
    for key, value in model.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key]), key


def test_load_model_state_not_strict_loads_what_fits():
    model = _small_model()
    fresh = {key: value.clone() for key, value in model.state_dict().items()}
    weights = _other_weights()
    skipped = load_model_state(model, weights, "--init-from other.pth", strict=False)
    # Mis-shaped, missing from the weights, and unexpected (reported, so nothing goes unsaid).
    assert sorted(skipped) == ["2.weight", "3.running_var", "5.weight"]
    state = model.state_dict()
    for key in ("0.weight", "0.bias", "2.bias", "3.weight", "3.bias", "3.running_mean"):
        assert torch.equal(state[key], weights[key]), key
    for key in ("2.weight", "3.running_var"):
        assert torch.equal(state[key], fresh[key]), key  # keeps its own initialisation


def test_load_model_state_strips_the_compiled_prefix():
    model = _small_model()
    torch.manual_seed(2)
    source = _small_model()
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(1.0)
    weights = {f"_orig_mod.{key}": value for key, value in source.state_dict().items()}
    assert load_model_state(model, weights, "x", strict=True) == []
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# --- 5. --init-from ------------------------------------------------------------------------------


def _trainer(argv: list[str]):
    from toolbox.cli.parse import parse_training_config
    from toolbox.records.log import close_logging
    from toolbox.training.trainer import Trainer

    trainer = Trainer(parse_training_config(argv))
    close_logging(trainer.logger)
    trainer.writer.close()
    return trainer


@pytest.mark.parametrize("source", ["checkpoint", "state_dict", "compiled_state_dict"])
def test_init_from_loads_fitting_weights_and_skips_the_head(source_run, tmp_path, source):
    saved = torch.load(source_run / "checkpoint.pth.tar", weights_only=True)["model"]
    path = source_run / "checkpoint.pth.tar"
    if source != "checkpoint":
        prefix = "_orig_mod." if source == "compiled_state_dict" else ""
        path = tmp_path / "weights.pth"
        torch.save({prefix + key: value for key, value in saved.items()}, path)

    five = [*TINY, "--epochs", "1", "--data.num-classes", "5", "--output-dir", str(tmp_path)]
    tuned = _trainer([*five, "--init-from", str(path), "--run-name", "tuned"])
    fresh = _trainer([*five, "--run-name", "fresh"])
    assert sorted(tuned.skipped_init_keys) == ["4.bias", "4.weight"]
    model, baseline = tuned.model.state_dict(), fresh.model.state_dict()
    for key in ("1.weight", "1.bias"):  # the hidden layer comes from the source run
        assert torch.equal(model[key], saved[key]), key
        assert not torch.equal(baseline[key], saved[key]), key
    for key in ("4.weight", "4.bias"):  # the head keeps its fresh initialisation
        assert model[key].shape[0] == 5 and saved[key].shape[0] == 10
        assert torch.equal(model[key], baseline[key]), key
    log = (tmp_path / "tuned" / "training.log").read_text()
    assert f"initialised from {path}; skipped (shape differs or absent): 4.bias, 4.weight" in log


def test_init_from_trains_a_new_head(source_run, train, tmp_path):
    path = source_run / "checkpoint.pth.tar"
    argv = [*TINY, "--epochs", "1", "--data.num-classes", "5", "--run-name", "tuned"]
    assert train(*argv, "--init-from", str(path)) == 0
    run_dir = tmp_path / "outputs" / "tuned"
    log = (run_dir / "training.log").read_text()
    assert "skipped (shape differs or absent): 4.bias, 4.weight" in log
    state = load_checkpoint(run_dir / "checkpoint.pth.tar")
    assert state["progress"]["epoch"] == 1 and tuple(state["model"]["4.weight"].shape) == (5, 256)
    assert str(path) in str(state["config"]["init_from"])


# --- 6. compiled and uncompiled checkpoints ----------------------------------------------------


@pytest.mark.slow
def test_checkpoints_move_between_compiled_and_uncompiled_runs(run_copy, train):
    path = run_copy / "checkpoint.pth.tar"
    # An uncompiled run's checkpoint continues compiled...
    assert train("--resume", str(path), "--epochs", "2", "--compile") == 0
    state = load_checkpoint(path)
    assert state["progress"]["epoch"] == 2 and state["config"]["compile"] is True
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        keys = list(load_checkpoint(run_copy / name)["model"])
        assert keys == ["1.weight", "1.bias", "4.weight", "4.bias"], (name, keys)
    assert ", compiled" in (run_copy / "training.log").read_text()
    # ...and the compiled run's checkpoint continues uncompiled.
    assert train("--resume", str(path), "--epochs", "3", "--no-compile") == 0
    state = load_checkpoint(path)
    assert state["progress"]["epoch"] == 3 and state["config"]["compile"] is False


# --- 7. a full disk at save time ---------------------------------------------------------------


def test_full_disk_stops_training_and_keeps_the_last_checkpoint(
    monkeypatch, train, tmp_path, capsys
):
    real_save = torch.save
    refused = []

    def save_until_full(obj, file, *args, **kwargs):
        if obj["progress"]["epoch"] < 2:
            return real_save(obj, file, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        file.write(buffer.getvalue()[: buffer.tell() // 2])  # the disk fills mid-write
        refused.append(file.name)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_full)
    assert train(*TINY, "--epochs", "3", "--run-name", "full") == 2
    err = flat(capsys.readouterr().err)
    run_dir = tmp_path / "outputs" / "full"
    assert refused, "the failing save was not reached"
    assert re.search(rf"could not write {re.escape(str(run_dir))}/\S+\.pth\.tar", err), err
    assert "No space left on device" in err and "the previous checkpoint is intact" in err
    for name in ("checkpoint.pth.tar", "model_best.pth.tar"):
        assert load_checkpoint(run_dir / name)["progress"]["epoch"] == 1, name
    assert not [path.name for path in run_dir.iterdir() if path.name.startswith(".")]

    # Once there is space again, the run resumes from that checkpoint.
    monkeypatch.undo()
    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "3") == 0
    assert load_checkpoint(run_dir / "checkpoint.pth.tar")["progress"]["epoch"] == 3
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()]
    assert epochs == ["epoch", "1", "2", "3"]
