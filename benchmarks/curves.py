"""How long curves.png takes to redraw during a run, against its first draw in the process.

The trainer redraws curves.png after each evaluation; the first draw imports matplotlib and
builds its font cache, and every later one should cost a small fraction of that. This draws
a 30-epoch metrics.csv with two metrics once cold, then --repeats times, and prints the
median redraw time, its spread and its ratio to the first draw. (It replaces a timed unit
test, which a busy machine failed.)

    uv run python benchmarks/curves.py --repeats 10
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from toolbox.records import curves


def write_metrics(path: Path, epochs: int = 30) -> Path:
    rows = ["epoch,step,lr,train_loss,val_loss,val_accuracy,val_top5,elapsed_s"]
    for epoch in range(1, epochs + 1):
        lr = 0.05 * (1 + math.cos(math.pi * epoch / epochs))
        loss = 2.3 * math.exp(-epoch / 5) + 0.01
        accuracy = 1 - 0.9 * math.exp(-epoch / 7)
        top5 = 1 - 0.5 * math.exp(-epoch / 3)
        val = 2.3 * math.exp(-epoch / 6) + 0.2
        rows.append(f"{epoch},{epoch * 50},{lr},{loss},{val},{accuracy},{top5},{epoch * 2.5}")
    path.write_text("\n".join(rows) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="redraws timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        csv, png = write_metrics(Path(folder) / "metrics.csv"), Path(folder) / "curves.png"
        started = time.perf_counter()
        curves.write_curves(csv, png)
        first = time.perf_counter() - started
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            curves.write_curves(csv, png)
            seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    print(f"first draw (imports matplotlib): {first:.3f} s")
    print(
        f"redraw: median {median:.3f} s ({min(seconds):.3f}-{max(seconds):.3f}) over "
        f"{args.repeats}, {median / first:.2f}x the first draw"
    )


if __name__ == "__main__":
    main()
