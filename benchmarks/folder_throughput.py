"""Reading an image folder: the toolbox's memory path (first epoch decodes and caches, later
runs load the cache), its stream path with 0 and N workers, and torchvision's ImageFolder +
DataLoader with the same per-sample transforms and workers. Samples/s side by side, and the
peak memory of the streamed path as the folder grows.

Each measurement is a fresh process (peak RSS is a high-water mark), run in turns so the
variants share the machine's drift. A measurement builds the dataset (``setup``: scanning,
decoding or loading the cache, the statistics) and reads --epochs epochs of training batches
of --batch-size, random crop (4 px padding) and flip included: on the batch for the memory
path (as the trainer does), per sample for the others. ``samples/s`` counts the epochs'
samples over setup plus epochs; ``epoch samples/s`` over the epochs alone. Peak RSS is the
training process's high-water mark (VmHWM), and its largest worker's. Medians
over --repeats, min-max in parentheses.

    uv run python benchmarks/folder_throughput.py --images 3000 --repeats 3
    uv run python benchmarks/folder_throughput.py --variants --rss-images 2000 8000 --size 96

(``--variants`` with no names skips the throughput table.)
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
VARIANTS = [
    "memory-first",
    "memory-cached",
    "stream-0",
    "stream-N",
    "imagefolder-0",
    "imagefolder-N",
]


def write_folder(root: Path, images: int, size: int, classes: int = 10) -> None:
    """``images`` noisy PNGs (``size`` px square) in ``classes`` class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class {i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def _peak_rss_bytes(pids: list[int]) -> int:
    """The sum of VmHWM (peak resident set) of ``pids``, read from /proc. A worker's counts
    the pages it shares with the process it was forked from (torch's libraries, mostly)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        except FileNotFoundError:  # a worker that has ended
            pass
    return total


def _worker_pids(loader) -> list[int]:
    iterator = getattr(loader, "_iterator", None)
    return [worker.pid for worker in getattr(iterator, "_workers", [])]


def measure(variant: str, root: Path, epochs: int, batch_size: int, workers: int) -> dict:
    """One measurement, in this process (a fresh one per call: see main)."""
    import os

    import torch
    import torchvision.transforms.v2  # noqa: F401 - imported before the clock starts, for all

    from toolbox.data.augment import BatchAugment
    from toolbox.data.loaders import make_loader
    from toolbox.datasets.folder import Folder

    cpu = torch.device("cpu")
    kind, _, count = variant.partition("-")
    num_workers = workers if count == "N" else 0
    start = time.perf_counter()
    augment = None
    if kind == "memory":
        split = Folder(root=str(root)).build().train
        loader = make_loader(split, batch_size, kind="memory", device=cpu, train=True)
        augment = BatchAugment("crop_flip", cpu, seed=1)
    elif kind == "stream":
        split = Folder(root=str(root), loader="stream", augment="crop_flip").build().train
        loader = make_loader(
            split, batch_size, kind="stream", device=cpu, train=True, num_workers=num_workers
        )
    else:
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        size = Folder(root=str(root), loader="stream").build().info.input_shape[1:]
        transform = v2.Compose(
            [v2.PILToTensor(), v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()]
        )
        dataset = ImageFolder(str(root), transform=transform)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
    setup = time.perf_counter() - start
    samples, epoch_start, workers_seen = 0, time.perf_counter(), set()
    for _ in range(epochs):
        for batch in loader:
            inputs = batch["input"] if isinstance(batch, dict) else batch[0]
            if augment is not None:
                inputs = augment(inputs)
            samples += len(inputs)
        workers_seen |= set(_worker_pids(getattr(loader, "loader", loader)))
    elapsed = time.perf_counter() - epoch_start
    worker_rss = max((_peak_rss_bytes([pid]) for pid in workers_seen), default=0)
    return {
        "setup": setup,
        "epochs": elapsed,
        "samples": samples,
        "main_rss": _peak_rss_bytes([os.getpid()]),
        "worker_rss": worker_rss,
    }


def _run_one(variant: str, root: Path, args) -> dict:
    command = [sys.executable, __file__, "--one", variant, "--root", str(root)]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    command += ["--workers", str(args.workers)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{variant} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _cell(values: list[float], fmt: str) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return format(middle, fmt)
    return f"{format(middle, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _clear_cache(root: Path) -> None:
    for cached in root.glob("toolbox-*.pt"):
        cached.unlink()


def throughput(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        write_folder(root, args.images, args.size)
        results: dict[str, list[dict]] = {variant: [] for variant in args.variants}
        for _ in range(args.repeats):
            for variant in args.variants:
                if variant == "memory-first":
                    _clear_cache(root)
                elif variant == "memory-cached" and not list(root.glob("toolbox-*.pt")):
                    _run_one("memory-first", root, args)  # writes the cache, not timed
                results[variant].append(_run_one(variant, root, args))
    print(
        f"{args.images} PNGs of {args.size}x{args.size} px, {args.epochs} epochs of batch "
        f"{args.batch_size}, N = {args.workers} workers, {args.repeats} repeats\n"
    )
    print("| variant | setup s | epoch samples/s | samples/s | peak RSS MB (worker) |")
    print("|---|---|---|---|---|")
    for variant, runs in results.items():
        per_epoch = [r["samples"] / r["epochs"] for r in runs]
        overall = [r["samples"] / (r["setup"] + r["epochs"]) for r in runs]
        rss = f"{statistics.median(r['main_rss'] for r in runs) / 1e6:,.0f}"
        if variant.endswith("-N"):
            rss += f" ({statistics.median(r['worker_rss'] for r in runs) / 1e6:,.0f})"
        print(
            f"| {variant.replace('-N', f'-{args.workers}')} | "
            f"{_cell([r['setup'] for r in runs], '.2f')} | {_cell(per_epoch, ',.0f')} | "
            f"{_cell(overall, ',.0f')} | {rss} |"
        )


def rss_growth(args) -> None:
    """Peak RSS of the streamed path and the memory path for folders of growing size."""
    print(f"\npeak RSS (MB) by folder size, {args.size}x{args.size} px PNGs, 1 epoch")
    print("| images | decoded MB | memory-first | stream-0 | stream-N main | stream-N worker |")
    print("|---|---|---|---|---|---|")
    one = argparse.Namespace(**{**vars(args), "epochs": 1})
    for images in args.rss_images:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "images"
            write_folder(root, images, args.size)
            peaks = {v: _run_one(v, root, one) for v in ("memory-first", "stream-0", "stream-N")}
        decoded = images * 3 * args.size**2 / 1e6
        cells = [peaks["memory-first"]["main_rss"], peaks["stream-0"]["main_rss"]]
        cells += [peaks["stream-N"]["main_rss"], peaks["stream-N"]["worker_rss"]]
        print(
            f"| {images:,} | {decoded:,.0f} | "
            + " | ".join(f"{c / 1e6:,.0f}" for c in cells)
            + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=VARIANTS)
    parser.add_argument(
        "--rss-images", type=int, nargs="*", default=[], help="folder sizes for peak RSS"
    )
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.root, args.epochs, args.batch_size, args.workers)))
        return
    if args.variants:
        throughput(args)
    if args.rss_images:
        rss_growth(args)


if __name__ == "__main__":
    main()
