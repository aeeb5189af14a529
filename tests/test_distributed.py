"""Data-parallel training under torchrun, on the CPU with gloo: the same command as one
process, exact sums over ranks, agreed stops, exact resume, and no hang when a rank dies."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

SMALL = [
    "--dataset",
    "synthetic",
    "--data.num-train",
    "330",  # 297 train samples: neither ranks nor batches divide it
    "--data.num-test",
    "64",
    "--model.dropout",
    "0",
    "--epochs",
    "2",
    "--log-every",
    "3",
    "--device",
    "cpu",
]
# Long enough (a few seconds) to be signalled or killed mid-run.
LONG = [
    "--dataset",
    "synthetic",
    "--data.num-train",
    "4000",
    "--model.dropout",
    "0",
    "--log-every",
    "5",
    "--device",
    "cpu",
]


def shard_loaders(kind: str, train: bool, batch_size: int, world_size: int):
    from toolbox.data.loaders import make_loader

    tensors = {"input": torch.arange(103.0).unsqueeze(1), "target": torch.arange(103)}
    return [
        make_loader(
            tensors,
            batch_size,
            kind=kind,
            device=torch.device("cpu"),
            train=train,
            seed=5,
            rank=rank,
            world_size=world_size,
        )
        for rank in range(world_size)
    ]


@pytest.mark.parametrize("kind", ["memory", "dataloader"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_each_global_batch_without_overlap(kind, world_size):
    (single,) = shard_loaders(kind, True, 4 * world_size, 1)
    ranks = shard_loaders(kind, True, 4, world_size)
    for _ in range(2):  # a new permutation each epoch, the same on every rank
        whole = [batch["target"] for batch in single]
        shares = [[batch["target"] for batch in loader] for loader in ranks]
        assert all(len(share) == len(whole) for share in shares)
        for index, batch in enumerate(whole):
            together = torch.cat([share[index] for share in shares])
            assert sorted(together.tolist()) == sorted(batch.tolist())
        seen = torch.cat([torch.cat(share) for share in shares]).tolist()
        assert len(set(seen)) == len(seen) == 103 // (4 * world_size) * 4 * world_size


@pytest.mark.parametrize("kind", ["memory", "dataloader"])
def test_evaluation_shards_cover_every_sample_once(kind):
    ranks = shard_loaders(kind, False, 4, 3)
    seen = [value for loader in ranks for batch in loader for value in batch["target"].tolist()]
    assert sorted(seen) == list(range(103))


def test_a_position_saved_with_other_ranks_resumes_at_the_first_unseen_sample():
    (saved,) = shard_loaders("memory", True, 4, 2)[:1]
    iterator = iter(saved)
    for _ in range(3):
        next(iterator)  # 3 batches of 2 ranks x 4: 24 samples seen
    state = saved.state_dict()
    (same_global,) = shard_loaders("memory", True, 8, 1)
    same_global.load_state_dict(state)
    assert same_global.resume_batch == 3
    (smaller,) = shard_loaders("memory", True, 5, 1)
    smaller.load_state_dict(state)
    assert smaller.resume_batch == 4  # 20 samples: rounded down to a whole batch


def torchrun(*args: str, processes: int = 2, wait: bool = True):
    """``torchrun --standalone --nproc-per-node N train.py ARGS`` as a user would type it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(processes), "train.py", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """The pids of the processes torchrun started, by their RANK."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environment:
            if parent == launcher_pid and entry.startswith(b"RANK="):
                found[int(entry[5:])] = int(name)
    return found


def wait_for_log(run_dir: Path, text: str, launcher: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and launcher.poll() is None:
        log = run_dir / "training.log"
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {run_dir / 'training.log'}")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)["model"]


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as file:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(file)]


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_two_processes_train_like_one_with_twice_the_batch(train, tmp_path, loader):
    """2 processes x batch 8, accumulating 2 batches per step, end with the weights and
    metrics of 1 process x batch 16 (same seed): DDP averages the gradients of the two
    halves of each global batch, and metrics are sums over all ranks."""
    common = [*SMALL, "--grad-accum", "2", "--data.loader", loader, "--output-dir", str(tmp_path)]
    two = torchrun(*common, "--batch-size", "8", "--run-name", "two")
    assert two.returncode == 0, two.stdout + two.stderr
    assert train(*common, "--batch-size", "16", "--run-name", "one") == 0

    one_weights, two_weights = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key, value in one_weights.items():
        # Float32 sums in another order: about 1e-8 apart here.
        torch.testing.assert_close(two_weights[key], value, rtol=0, atol=1e-6)
    one_rows, two_rows = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert len(one_rows) == len(two_rows) == 2
    for single, parallel in zip(one_rows, two_rows, strict=True):
        assert single.keys() == parallel.keys()
        for column in single:
            assert float(parallel[column]) == pytest.approx(float(single[column]), abs=1e-6)
    log = (tmp_path / "two" / "training.log").read_text()
    assert "distributed: 2 processes (gloo); batch size 8 per process, 16 in all" in log


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_after_the_same_step_and_resume_is_exact(tmp_path):
    """SIGTERM reaches rank 1 only; every rank stops after the same step, rank 0 saves, and
    `--resume auto` under torchrun ends exactly where an uninterrupted run does."""
    common = [*LONG, "--epochs", "12", "--output-dir", str(tmp_path)]
    whole = torchrun(*common, "--run-name", "whole")
    assert whole.returncode == 0, whole.stdout + whole.stderr

    launcher = torchrun(*common, "--run-name", "stopped", "--resume", "auto", wait=False)
    wait_for_log(tmp_path / "stopped", "epoch 2/12 train_loss", launcher)
    os.kill(worker_pids(launcher.pid)[1], signal.SIGTERM)
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode != 0
    assert "exitcode  : 143" in output  # torchrun's report of the rank that stopped first
    log = (tmp_path / "stopped" / "training.log").read_text()
    assert "stopped by SIGTERM after step" in log, log
    stopped_at = torch.load(tmp_path / "stopped" / "checkpoint.pth.tar", weights_only=True)
    assert 0 < stopped_at["progress"]["step"] < 12 * 14
    assert len(stopped_at["ranks"]) == 2  # each rank's random streams

    resumed = torchrun(*common, "--run-name", "stopped", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in (tmp_path / "stopped" / "training.log").read_text()
    for key, value in weights(tmp_path / "whole").items():
        assert torch.equal(weights(tmp_path / "stopped")[key], value), key
    assert rows(tmp_path / "stopped") == rows(tmp_path / "whole")


@pytest.mark.slow
def test_resume_with_another_number_of_processes(train, tmp_path):
    common = [*SMALL, "--batch-size", "8", "--output-dir", str(tmp_path), "--run-name", "run"]
    started = torchrun(*common, "--epochs", "1")
    assert started.returncode == 0, started.stdout + started.stderr
    checkpoint = tmp_path / "run" / "checkpoint.pth.tar"
    assert train("--resume", str(checkpoint), "--epochs", "3") == 0
    log = (tmp_path / "run" / "training.log").read_text()
    assert "resumed with 1 processes, saved with 2" in log
    # 297 samples: 18 steps of 2 x 8 per epoch, 37 of 8 now; the cosine schedule goes on
    # from the same fraction of the run and ends at 0.
    assert (
        "18 optimizer steps per epoch when saved, 37 now: the schedule goes on from step 37" in log
    )
    final = rows(tmp_path / "run")
    assert [row["epoch"] for row in final] == ["1", "2", "3"]
    assert float(final[-1]["lr"]) == 0.0


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_with_a_clear_message(tmp_path):
    launcher = torchrun(*LONG, "--epochs", "500", "--output-dir", str(tmp_path), wait=False)
    run_dir = None
    deadline = time.monotonic() + 120
    while run_dir is None and time.monotonic() < deadline:
        run_dir = next(iter(tmp_path.glob("*/training.log")), None)
        time.sleep(0.1)
    wait_for_log(run_dir.parent, "epoch 2/500 train_loss", launcher)
    os.kill(worker_pids(launcher.pid)[1], signal.SIGKILL)
    killed_at = time.monotonic()
    output, _ = launcher.communicate(timeout=120)
    assert time.monotonic() - killed_at < 60
    assert launcher.returncode != 0
    assert "rank 0/2: error: lost contact with the other processes" in output
    assert "--resume" in output
    assert "[rank0]: Traceback" not in output


@pytest.mark.slow
def test_a_hung_rank_times_out_after_dist_timeout(tmp_path):
    """A rank that stops answering (SIGSTOP: alive, so torchrun does not notice) makes the
    others give up at their next collective after --dist-timeout."""
    args = [*LONG, "--epochs", "500", "--dist-timeout", "3", "--output-dir", str(tmp_path)]
    launcher = torchrun(*args, "--run-name", "hung", wait=False)
    wait_for_log(tmp_path / "hung", "epoch 2/500 train_loss", launcher)
    workers = worker_pids(launcher.pid)
    os.kill(workers[1], signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        deadline = stopped_at + 60
        while "lost contact" not in (tmp_path / "hung" / "run.json").read_text():
            assert time.monotonic() < deadline, "rank 0 did not give up"
            time.sleep(0.2)
        assert time.monotonic() - stopped_at < 30
    finally:
        os.kill(workers[1], signal.SIGKILL)
        output, _ = launcher.communicate(timeout=120)
    assert "did not answer within --dist-timeout 3 s" in output


@pytest.mark.slow
def test_a_bad_device_under_torchrun_is_a_message_naming_the_rank(tmp_path):
    result = torchrun(*SMALL, "--device", "cuda:1", "--output-dir", str(tmp_path))
    assert result.returncode != 0
    # Each rank fails on its own; torchrun may end the second before it prints.
    assert re.search(r"rank [01]/2: error: --device is 'cuda:1'", result.stdout + result.stderr)
    assert "[rank0]: Traceback" not in result.stdout + result.stderr
