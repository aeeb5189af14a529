"""``--sweep-workers N`` and ``--sweep-devices 0,1,...``: a sweep's runs several at once, each
in a ``python train.py`` process of its own, started with the arguments the sequential sweep
would train it with (so skipping, resuming and summary.csv are the sequential sweep's).
Torch-free: the workers import torch, not this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rich.console import Console

from toolbox.errors import UserError
from toolbox.training.signals import active_watch

POLL_S = 0.2
"""How often the workers are looked at: a run takes seconds at least, so this costs nothing."""


def worker_slots(
    workers: int | None, devices: str | None, program: str
) -> list[dict[str, str]] | None:
    """The environment variables each worker's runs get, one dict per worker; None when
    neither option is given (the sweep trains in this process). On the CPU the cores are
    split between the workers (OMP_NUM_THREADS, which torch reads for its thread count,
    unless already set); each of ``devices`` gets one worker (CUDA_VISIBLE_DEVICES)."""
    if workers is None and devices is None:
        return None
    listed = None if devices is None else [device.strip() for device in devices.split(",")]
    if listed is not None and (not all(listed) or len(set(listed)) < len(listed)):
        raise UserError(
            f"--sweep-devices {devices}: list distinct GPU indices, one worker each "
            "(e.g. --sweep-devices 0,1,2,3)."
        )
    count = len(listed) if workers is None else workers
    if count < 1:
        raise UserError(f"--sweep-workers {workers}: give the number of runs at once, 1 or more.")
    if listed is not None and count != len(listed):
        raise UserError(
            f"--sweep-workers {workers} with --sweep-devices {devices}: each device gets one "
            "worker; drop --sweep-workers (or make it the number of devices)."
        )
    if not Path(program).is_file():
        raise UserError(
            f"--sweep-workers starts `python {program}` for each run, but there is no file "
            f"{program} here; start the sweep from the directory that holds {program}."
        )
    threads = str(max(1, len(os.sched_getaffinity(0)) // count))
    slots = []
    for index in range(count):
        env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
        if listed is not None:
            env["CUDA_VISIBLE_DEVICES"] = listed[index]
        slots.append(env)
    return slots


def _launch(command: list[str], env: dict[str, str], output: BinaryIO) -> subprocess.Popen:
    # A session of its own: a Ctrl-C reaches this process only, which passes it on once (a
    # second SIGINT would make a worker stop without saving its position).
    return subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        start_new_session=True,
    )


def train_in_parallel(
    console: Console,
    runs: Iterator[tuple[str, str, list[str]]],
    slots: list[dict[str, str]],
    sweep_dir: Path,
    program: str,
) -> set[str]:
    """Trains ``runs`` (label, name, train.py arguments) ``len(slots)`` at a time, each one's
    console output in ``<sweep_dir>/<name>.out``; returns the names of those that failed. A
    stop signal is passed on to the running workers, which save their position; once they
    have ended it is raised as RunStopped."""
    watch = active_watch()
    free = list(range(len(slots)))
    running: dict[int, tuple[subprocess.Popen, str, str]] = {}  # slot -> process, label, name
    failed: set[str] = set()
    stopping = False
    try:
        while True:
            if watch is not None and watch.received is not None and not stopping:
                stopping = True
                for process, _, _ in running.values():
                    process.send_signal(watch.received)
            while free and not stopping and (run := next(runs, None)) is not None:
                label, name, run_argv = run
                slot = free.pop(0)
                with open(sweep_dir / f"{name}.out", "ab") as output:
                    process = _launch(
                        [sys.executable, program, *run_argv], {**os.environ, **slots[slot]}, output
                    )
                settings = " ".join(f"{key}={value}" for key, value in slots[slot].items())
                console.print(f"{label}: worker {slot} ({settings}), pid {process.pid}")
                running[slot] = (process, label, name)
            if not running:
                break
            time.sleep(POLL_S)
            for slot, (process, label, name) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[slot]
                free.append(slot)
                if code == 0:
                    console.print(f"{label}: done")
                elif code > 128:  # 128 + signal: it saved its position and says so in its log
                    console.print(f"{label}: stopped by {signal.Signals(code - 128).name}")
                else:
                    failed.add(name)
                    console.print(
                        f"{label}: failed (exit code {code}; see {sweep_dir / name}.out); "
                        "going on with the next combination"
                    )
    finally:  # a second Ctrl-C or an error here: no worker is left training unwatched
        for process, _, _ in running.values():
            process.terminate()
            process.wait()
    if watch is not None:
        watch.raise_if_received(
            "the runs in training saved their position; run the same command to finish the "
            "sweep (finished runs are skipped, stopped ones resumed)"
        )
    return failed
