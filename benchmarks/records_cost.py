"""What a run's records cost the trainer's main thread, piece by piece, on a fake run directory.

Every repetition is a fresh process, because imports are most of the cost (matplotlib's alone
is about a second of one core). It imports torch (and, with --dataset-imports torchvision,
torchvision, as the MNIST and CIFAR datasets do), none of it timed, then plays a run's records
in the trainer's order, timing each call on the main thread:

- start: ``environment()`` (env.json: git status, versions), ``RunRecord.start`` (run.json;
  the git diff when the code has changes), the config/runtime/env JSON files, importing and
  creating the ``SummaryWriter``, the sample grid, the ``CurvesPlotter``;
- each of --epochs epochs: a fixed amount of torch work standing in for training (timed
  apart: it shows what a background drawer takes from training), then a metrics.csv row,
  ``RunRecord.progress`` and ``plotter.update()``;
- end: ``plotter.update(force=True)`` and ``plotter.finish()`` (curves.png), ``log_hparams``,
  closing the writer, ``RunRecord.finish``.

``--mode inline`` draws curves.png on the main thread (what the trainer did before);
``--mode background`` starts the drawer process first thing (``curves.start_drawer()``, where
train_main would call it: before torch is imported), then imports torch and spends --setup-s
of single-threaded work standing in for building the data and the model, while the drawer
imports matplotlib, and draws in it. Medians over --repeats, min-max
in parentheses. On a shared machine the absolute figures drift a lot; compare the modes run
one after another, and trust the medians over several repeats.

    uv run python benchmarks/records_cost.py --repeats 5
    uv run python benchmarks/records_cost.py --repeats 5 --modes inline --dataset-imports none
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START = ["environment", "run.json start", "json files", "SummaryWriter", "sample grid", "plotter"]
EPOCH = ["metrics row", "run.json progress", "plotter.update"]
END = ["curves.png", "log_hparams", "writer.close", "run.json finish"]


def _busy_python(seconds: float) -> None:
    """Single-threaded work, as importing and decoding are."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sum(i * i for i in range(2000))


def _torch_work(steps: int) -> None:
    import torch

    a, b = torch.randn(384, 384), torch.randn(384, 384)
    for _ in range(steps):
        a = torch.tanh(a @ b) * 0.5


def child(args: argparse.Namespace) -> dict:
    """One repetition; the seconds of each piece."""
    sys.path.insert(0, str(REPO))
    from toolbox.records import curves

    seconds: dict[str, float] = {}
    clock = time.perf_counter

    def timed(name: str, call):
        started = clock()
        result = call()
        seconds[name] = seconds.get(name, 0.0) + clock() - started
        return result

    if args.mode == "background":  # where train_main would: parsed, torch not imported yet
        timed("start drawer", curves.start_drawer)
    import torch

    if args.dataset_imports == "torchvision":
        import torchvision  # noqa: F401
    _torch_work(5)  # as building the data and the model would: the thread pool is up
    _busy_python(args.setup_s)

    from toolbox.config.plain import to_plain
    from toolbox.config.training import TrainingConfig
    from toolbox.records import tensorboard
    from toolbox.records.atomic import write_json
    from toolbox.records.environment import environment
    from toolbox.records.metrics_table import MetricsTable
    from toolbox.records.run_record import RunRecord

    config = TrainingConfig()
    run_dir = Path(tempfile.mkdtemp(prefix="records_cost_"))
    env = timed("environment", lambda: environment(torch.device("cpu")))
    record = RunRecord(run_dir)
    timed("run.json start", lambda: record.start(config, ["train.py"], env["git"]))

    def json_files():
        write_json(run_dir / "config.json", to_plain(config))
        write_json(run_dir / "runtime.json", {"lr_scale": 1.0})
        write_json(run_dir / "env.json", env)

    timed("json files", json_files)

    def summary_writer():
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(run_dir))

    writer = timed("SummaryWriter", summary_writer)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    timed("sample grid", lambda: tensorboard.log_sample_grid(writer, images, (33.3,), (78.6,)))
    options = {"background": True} if args.mode == "background" else {}
    table = MetricsTable(run_dir / "metrics.csv", ["epoch", "step", "lr", "train_loss"])
    table.columns += ["val_loss", "val_accuracy", "elapsed_s"]
    plotter = timed(
        "plotter",
        lambda: curves.CurvesPlotter(
            table.path, run_dir / "curves.png", title=run_dir.name, **options
        ),
    )

    for epoch in range(1, args.epochs + 1):
        timed("epoch work", lambda: _torch_work(args.epoch_steps))
        row = {"epoch": epoch, "step": 422 * epoch, "lr": 1e-3 / epoch, "train_loss": 1 / epoch}
        row |= {"val_loss": 1.1 / epoch, "val_accuracy": 1 - 0.1 / epoch, "elapsed_s": epoch}
        timed("metrics row", lambda row=row: table.append(row))
        timed("run.json progress", lambda e=epoch: record.progress(e, 0.5, e, float(e)))
        timed("plotter.update", plotter.update)

    def draw_last():
        plotter.update(force=True)
        finish = getattr(plotter, "finish", None)  # older versions drew in update()
        if finish is not None:
            finish()

    timed("curves.png", draw_last)
    final = {"val_loss": 0.5, "best_val_loss": 0.5}
    timed("log_hparams", lambda: tensorboard.log_hparams(writer, to_plain(config), final, 2))
    timed("writer.close", writer.close)
    timed("run.json finish", lambda: record.finish("finished"))
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    return seconds


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["inline", "background"])
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # one repetition, in a child
    parser.add_argument("--dataset-imports", choices=["torchvision", "none"], default="torchvision")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--epoch-steps", type=int, default=200, help="torch work per epoch")
    parser.add_argument("--setup-s", type=float, default=0.5, help="data and model stand-in")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return

    results: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for repeat in range(args.repeats):
        order = args.modes[repeat % len(args.modes) :] + args.modes[: repeat % len(args.modes)]
        for mode in order:  # rotated, so that a drift of the machine hits every mode
            command = [sys.executable, __file__, "--mode", mode, *_passed_on(args)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[mode].append(json.loads(output.strip().splitlines()[-1]))

    print(
        f"seconds on the main thread; median (min-max) over {args.repeats} fresh processes, "
        f"dataset imports: {args.dataset_imports}"
    )
    pieces = ["start drawer", *START, "epoch work", *EPOCH, *END]
    print(f"| piece | {' | '.join(args.modes)} |")
    print(f"|---|{'---|' * len(args.modes)}")
    for piece in pieces:
        cells = [
            _summary([run[piece] for run in results[mode]])
            if all(piece in run for run in results[mode])
            else "-"
            for mode in args.modes
        ]
        print(f"| {piece} | {' | '.join(cells)} |")
    for label, group in (("start", ["start drawer", *START]), ("epochs", EPOCH), ("end", END)):
        cells = [
            _summary([sum(run.get(piece, 0.0) for piece in group) for run in results[mode]])
            for mode in args.modes
        ]
        print(f"| **{label} total** | {' | '.join(cells)} |")
    cells = [
        _summary([sum(v for k, v in run.items() if k != "epoch work") for run in results[mode]])
        for mode in args.modes
    ]
    print(f"| **all records** | {' | '.join(cells)} |")


def _passed_on(args: argparse.Namespace) -> list[str]:
    return [
        "--dataset-imports",
        args.dataset_imports,
        "--epochs",
        str(args.epochs),
        "--epoch-steps",
        str(args.epoch_steps),
        "--setup-s",
        str(args.setup_s),
    ]


if __name__ == "__main__":
    main()
