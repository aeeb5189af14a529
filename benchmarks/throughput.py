"""Throughput of the toolbox against a bare loop, a per-sample DataLoader loop and Lightning.

    python benchmarks/throughput.py [--repeats 5] [--epochs 2] [--cases mlp:128 mlp:512 cnn:128]

Each run is a fresh process; the variants of a case run interleaved, in a rotated order, so
that drifts of the machine hit all of them alike. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIGHTNING_ENV = HERE / ".venv-lightning"
LIGHTNING_VERSION = "2.6.6"
VARIANTS = (
    "toolbox",
    "bare",
    "dataloader",
    "lightning",
    "toolbox_no_train_metrics",
    "toolbox_hooked",
)
TOOLBOX_OPTIONS = {
    "toolbox": [],
    # What scoring --metrics accuracy on the training batches costs (on by default).
    "toolbox_no_train_metrics": ["--no-train-metrics"],
    # A callback with a per-step hook that does nothing measurable (grad_norm's hook runs
    # every step, its measurement never): the cost of hooking the step.
    "toolbox_hooked": ["--callbacks", "grad_norm", "--callback.grad-norm.every", "1000000"],
}


def lightning_python() -> str:
    """The Python of a separate environment with the toolbox's locked dependencies plus
    Lightning (not a toolbox dependency); made with uv on first use."""
    python = LIGHTNING_ENV / "bin" / "python"
    if not python.exists():
        requirements = subprocess.run(
            ["uv", "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        listing = LIGHTNING_ENV.with_suffix(".txt")
        subprocess.run(["uv", "venv", "--quiet", str(LIGHTNING_ENV)], check=True)
        listing.write_text(requirements + f"lightning=={LIGHTNING_VERSION}\n")
        subprocess.run(
            ["uv", "pip", "install", "--quiet", "--python", str(python), "-r", str(listing)],
            check=True,
        )
    return str(python)


def command(variant: str, case: str, batch: int, epochs: int, root: str, out: Path) -> list[str]:
    if variant in TOOLBOX_OPTIONS:
        model = ["--arch", "mlp", "--model.hidden-sizes", "256", "--model.dropout", "0"]
        return [
            sys.executable,
            str(REPO / "train.py"),
            *(model if case == "mlp" else ["--arch", "cnn"]),
            "--dataset",
            "mnist",
            "--data.root",
            root,
            "--data.no-download",
            "--optimizer",
            "adamw",
            "--scheduler",
            "none",
            "--batch-size",
            str(batch),
            "--epochs",
            str(epochs),
            "--device",
            "cpu",
            "--output-dir",
            str(out),
            "--run-name",
            "run",
            *TOOLBOX_OPTIONS[variant],
        ]
    python = lightning_python() if variant == "lightning" else sys.executable
    workload = str(HERE / "_workloads.py")
    return [python, workload, variant, case, str(batch), str(epochs), root]


def run_once(variant: str, case: str, batch: int, epochs: int, root: str) -> dict:
    """One run in a fresh process: its epoch times, wall time and peak memory (RSS)."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            command(variant, case, batch, epochs, root, Path(out)),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"{variant} {case}:{batch} exited {process.returncode}")
        if variant in TOOLBOX_OPTIONS:
            with open(Path(out) / "run" / "metrics.csv") as file:
                elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(file)]
            epoch_s = [b - a for a, b in zip([0.0, *elapsed[:-1]], elapsed, strict=True)]
            samples = 54000 // batch * batch
        else:
            result = json.loads(stdout.strip().splitlines()[-1])
            epoch_s, samples = result["epoch_s"], result["samples_per_epoch"]
    return {
        "variant": variant,
        "case": case,
        "batch_size": batch,
        "epoch_s": epoch_s,
        "samples_per_epoch": samples,
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def help_seconds(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--help"], check=True, capture_output=True
        )
        times.append(time.perf_counter() - started)
    return times


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def figures(runs: list[dict], case: str, batch: int, variant: str, key: str) -> list[float]:
    """One figure per run of a variant on a case; throughput and epoch time are steady-state
    (the median of the epochs after the first, which warms up)."""
    picked = [
        r for r in runs if (r["case"], r["batch_size"], r["variant"]) == (case, batch, variant)
    ]
    if key == "throughput":
        return [
            r["samples_per_epoch"] / statistics.median(r["epoch_s"][1:] or r["epoch_s"])
            for r in picked
        ]
    if key == "epoch_s":
        return [statistics.median(r["epoch_s"][1:] or r["epoch_s"]) for r in picked]
    return [r[key] for r in picked]


def summarize(runs: list[dict], cases: list[tuple[str, int]]) -> str:
    """A markdown table: medians over repeats, min-max in parentheses, ratios to bare."""
    lines = [
        "| case | variant | samples/s | vs bare | epoch s | overhead ms/epoch | wall s | "
        "vs bare | peak RSS MB | vs bare |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, batch in cases:
        base = {
            key: statistics.median(figures(runs, case, batch, "bare", key))
            for key in ("throughput", "epoch_s", "wall_s", "peak_rss_mb")
        }
        for variant in VARIANTS:
            throughput = figures(runs, case, batch, variant, "throughput")
            if not throughput:
                continue
            epoch = statistics.median(figures(runs, case, batch, variant, "epoch_s"))
            wall = statistics.median(figures(runs, case, batch, variant, "wall_s"))
            rss = statistics.median(figures(runs, case, batch, variant, "peak_rss_mb"))
            lines.append(
                f"| {case} b{batch} | {variant} | {spread(throughput)} | "
                f"{statistics.median(throughput) / base['throughput']:.2f}x | {epoch:.2f} | "
                f"{(epoch - base['epoch_s']) * 1000:+.0f} | {wall:.1f} | "
                f"{wall / base['wall_s']:.2f}x | {rss:.0f} | {rss / base['peak_rss_mb']:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="per run; the first is warm-up")
    parser.add_argument("--cases", nargs="+", default=["mlp:128", "mlp:512", "cnn:128"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    cases = [(name, int(batch)) for name, batch in (c.split(":") for c in args.cases)]

    if "lightning" in args.variants:
        lightning_python()
    # Decode MNIST once so that every timed run reads the same cache.
    run_once("bare", "mlp", 512, 1, args.data_root)
    runs = []
    for repeat in range(args.repeats):
        for case, batch in cases:
            shift = repeat % len(args.variants)
            for variant in args.variants[shift:] + args.variants[:shift]:
                runs.append(run_once(variant, case, batch, args.epochs, args.data_root))
                print(
                    f"repeat {repeat + 1}/{args.repeats} {case} b{batch} {variant}: "
                    f"{runs[-1]['epoch_s']} s/epoch, wall {runs[-1]['wall_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    helps = help_seconds(10)

    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, python {platform.python_version()}; "
        f"{args.repeats} repeats x {args.epochs} epochs, medians (min-max)\n"
    )
    print(summarize(runs, cases))
    print(
        f"\n`train.py --help`: median {statistics.median(helps):.3f} s "
        f"({min(helps):.3f}-{max(helps):.3f}) over 10 runs"
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "help_s": helps}, indent=1))


if __name__ == "__main__":
    main()
