"""How long --help takes, against a bare two-field tyro CLI on the same interpreter.

Every run is a fresh process (imports included: they are most of the cost). One round runs
each command once, in an order rotated by one each round, so a drift of the machine hits all
of them; --repeats rounds give each command's median, its spread (min-max) and its ratio to
the bare CLI's median. The target is train.py --help within 2x of the bare CLI.

Under PYTHONDONTWRITEBYTECODE=1 nothing is byte-compiled on import, so modules without a
.pyc are compiled on every run. uv's compile-bytecode setting compiles site-packages (tyro,
rich: the bare CLI's cost too) when it installs them, but not the toolbox's own modules, an
editable install outside site-packages. The header says how many of those have a current
.pyc here, and the last line times train.py --help on a copy of the toolbox without any:
what every run costs in a fresh checkout under PYTHONDONTWRITEBYTECODE=1.

    uv run python benchmarks/help_time.py --repeats 7
    PYTHONDONTWRITEBYTECODE=1 uv run python benchmarks/help_time.py  # nothing byte-compiled

Run it on a quiet machine: anything else running slows a run several times over.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BARE = textwrap.dedent(
    '''
    from dataclasses import dataclass

    import tyro


    @dataclass(frozen=True)
    class Args:
        """A bare two-field CLI."""

        epochs: int = 20
        """Total number of epochs."""
        device: str = "auto"
        """Device to train on."""


    tyro.cli(Args)
    '''
)


UNCOMPILED = "train.py --help, toolbox not byte-compiled"


def commands(bare: Path, copy: Path) -> dict[str, tuple[list[str], Path]]:
    """Each command and the directory it runs in."""
    python = sys.executable
    return {
        "bare tyro --help": ([python, str(bare), "--help"], REPO),
        "train.py --help": ([python, "train.py", "--help"], REPO),
        "train.py --arch resnet18 --help": (
            [python, "train.py", "--arch", "resnet18", "--help"],
            REPO,
        ),
        "python -m toolbox runs --help": ([python, "-m", "toolbox", "runs", "--help"], REPO),
        UNCOMPILED: ([python, "train.py", "--help"], copy),
    }


def time_once(command: list[str], cwd: Path) -> float:
    env = {**os.environ}
    if cwd != REPO:  # the copy: its toolbox first on the path, and never byte-compiled
        env.update(PYTHONPATH=str(cwd), PYTHONDONTWRITEBYTECODE="1")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr.decode()}")
    return seconds


def byte_compiled(package: Path) -> tuple[int, int]:
    """How many of ``package``'s modules have a .pyc that is current, and how many there are
    (checked as the import system checks: the source's mtime and size in the header)."""
    sources = sorted(package.rglob("*.py"))
    current = 0
    for source in sources:
        try:
            header = Path(importlib.util.cache_from_source(str(source))).read_bytes()[:16]
        except OSError:
            continue
        flags, mtime, size = struct.unpack("<III", header[4:16])
        stat = source.stat()
        if flags or (mtime, size) == (int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF):
            current += 1
    return current, len(sources)


def copy_without_bytecode(folder: Path) -> Path:
    copy = folder / "uncompiled"
    shutil.copytree(
        REPO / "toolbox", copy / "toolbox", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "train.py", copy / "train.py")
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command")
    args = parser.parse_args()
    compiled, modules = byte_compiled(REPO / "toolbox")
    with tempfile.TemporaryDirectory() as folder:
        bare = Path(folder) / "bare_cli.py"
        bare.write_text(BARE)
        named = commands(bare, copy_without_bytecode(Path(folder)))
        names = list(named)
        for name in names:  # one untimed run each: the page cache (and .pyc files, if written)
            time_once(*named[name])
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for round_idx in range(args.repeats):
            shift = round_idx % len(names)
            for name in names[shift:] + names[:shift]:
                seconds[name].append(time_once(*named[name]))
    base = statistics.median(seconds[names[0]])
    dont_write = os.environ.get("PYTHONDONTWRITEBYTECODE") or "unset"
    print(
        f"python {sys.version.split()[0]}, tyro {version('tyro')}, {args.repeats} runs each, "
        f"{os.cpu_count()} CPUs, PYTHONDONTWRITEBYTECODE={dont_write}; {compiled} of the "
        f"toolbox's {modules} modules had a current .pyc"
    )
    width = max(map(len, names))
    for name in names:
        median = statistics.median(seconds[name])
        print(
            f"{name:<{width}}  median {median:.3f} s "
            f"({min(seconds[name]):.3f}-{max(seconds[name]):.3f})  {median / base:.2f}x bare"
        )


if __name__ == "__main__":
    main()
