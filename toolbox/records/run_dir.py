"""Creating a run's directory and taking its lock before anything is written into it."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime
from pathlib import Path

from toolbox.config.training import TrainingConfig
from toolbox.errors import UserError
from toolbox.records.checkpoint import LAST
from toolbox.records.lock import RunLock, move_aside


def new_run_dir(config: TrainingConfig) -> tuple[Path, RunLock]:
    """Create ``<output-dir>/<run-name or YYMMDD_HHMMSS>`` and take its lock before anything
    is written into it; a timestamp already taken gets a numeric suffix. A run name already
    taken is refused while its run is alive or has a checkpoint to resume; an attempt that
    died before its first checkpoint left nothing to resume, so its directory is moved aside
    (its log kept) and the same command starts the run again."""
    output_dir = Path(config.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        if config.run_name is not None:
            return _claim_named_run_dir(output_dir / config.run_name)
        stamp = datetime.now().strftime("%y%m%d_%H%M%S")
        for attempt in range(1000):
            run_dir = output_dir / (stamp if attempt == 0 else f"{stamp}_{attempt}")
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            return run_dir, RunLock.acquire(run_dir, f"--output-dir {output_dir}")
        raise UserError(f"could not find a free run directory name under {output_dir}.")
    except UserError:
        raise
    except OSError as error:
        raise UserError(
            f"--output-dir {output_dir}: cannot create the run directory there ({error}); "
            "choose a writable directory with --output-dir."
        ) from error


def _claim_named_run_dir(run_dir: Path) -> tuple[Path, RunLock]:
    purpose = f"--run-name {run_dir.name!r}"
    try:
        run_dir.mkdir()
        return run_dir, RunLock.acquire(run_dir, purpose)
    except FileExistsError:
        pass
    # Holding its lock while looking, so that no other process can start in it meanwhile.
    old_lock = RunLock.acquire(run_dir, purpose)
    try:
        if (run_dir / LAST).exists():
            resume = shlex.join(["--resume", str(run_dir / LAST)])
            raise UserError(
                f"{purpose}: {run_dir} already exists and holds a run with a checkpoint; "
                f"continue it with {resume}, or choose another --run-name."
            )
        aside = move_aside(run_dir, "no-checkpoint")
    finally:
        old_lock.release()
    print(
        f"{purpose}: {run_dir} had no checkpoint (an attempt that stopped before its first "
        f"one); moved it to {aside.name}, starting the run again.",
        file=sys.stderr,
    )
    run_dir.mkdir()
    return run_dir, RunLock.acquire(run_dir, purpose)
