"""When a run stops short of --epochs, and what it says then: stop signals agreed on by all
ranks, stops asked for by callbacks (early stopping), divergence and lost processes; and
runtime.json's lr_scale, the one setting a user may change while the run trains."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import torch

from toolbox.config.training import TrainingConfig
from toolbox.errors import DivergenceError, LostContactError, RunStopped
from toolbox.records import checkpoint
from toolbox.records.layout import RUNTIME
from toolbox.training.distributed import Distributed
from toolbox.training.signals import StopSignals
from toolbox.training.state import RunState

# The learning-rate factors runtime.json may set: beyond them a "factor" is a typo (or an
# overflow) that would wreck the run rather than steer it.
LR_SCALE_RANGE = (1e-6, 1e3)


def loss_became_non_finite(epoch_idx: int, batch_idx: int) -> str:
    return f"the training loss became non-finite in epoch {epoch_idx + 1}, batch {batch_idx + 1}"


class StopController:
    """Decides, at steps every rank reaches together, whether the run stops, and words it.

    ``signal`` is the stop signal all ranks agreed on at the last ``agree()``;
    ``stop_request`` the reason a callback (early stopping, a search's pruner) gave for
    ending the run, which the trainer honours after that evaluation. ``attach`` gives it
    the run directory and the log once they exist."""

    def __init__(
        self,
        config: TrainingConfig,
        dist: Distributed,
        device: torch.device,
        signals: StopSignals,
        state: RunState,
    ) -> None:
        self.config, self.dist, self.device = config, dist, device
        self.signals, self.state = signals, state
        self.signal: int | None = None
        self.stop_request: str | None = None
        self.run_dir: Path | None = None
        self.logger: logging.Logger | None = None
        self._ignored_runtime: str | None = None
        """The runtime.json text last ignored, so that a bad edit is logged once."""

    def attach(self, run_dir: Path, logger: logging.Logger) -> None:
        self.run_dir, self.logger = run_dir, logger

    # --- signals -------------------------------------------------------------------------

    def agree(self) -> None:
        """Under torchrun a signal may reach one rank only; all ranks learn of it here, at a
        step every rank calls this at, and stop after that same step."""
        self.signal = self.dist.agree_on_signal(self.signals.received, self.device)

    def raise_if_stopped_in_set_up(self) -> None:
        """A stop during set-up writes no checkpoint: a new run's directory then holds none,
        which the same command moves aside before starting again (see new_run_dir)."""
        if self.signal is None:
            return
        kept = "its checkpoint is unchanged" if self.config.resume else "no checkpoint was written"
        raise RunStopped(
            f"stopped by {signal.Signals(self.signal).name} during set-up, before the "
            f"first step; {kept}: run the same command again.",
            128 + self.signal,
        )

    def stopped_after_step(self, resume_command: str) -> RunStopped:
        """The agreed signal's stop, once the checkpoint that resumes it is written: logged
        with the command that continues the run."""
        name = signal.Signals(self.signal).name
        loader, progress = self.state.train_loader, self.state.progress
        position = loader.state_dict()["next_batch"]
        self.logger.info(
            "stopped by %s after step %d (epoch %d%s); continue with: %s",
            name,
            progress.step,
            progress.epoch + (1 if position else 0),
            f", batch {position} of {len(loader)}" if position else " done",
            resume_command,
        )
        return RunStopped(f"stopped by {name}", 128 + self.signal, reported=True)

    def request_stop(self, reason: str) -> None:
        """End the run at the next evaluation's or epoch's end; the first reason is kept."""
        self.stop_request = self.stop_request or reason

    # --- failures ------------------------------------------------------------------------

    def diverged(self, what: str) -> DivergenceError:
        good = checkpoint.newest_finite(self.run_dir)
        kept = f"the last good checkpoint is {good}" if good else "no good checkpoint was written"
        return DivergenceError(
            f"{what} (after {self.state.progress.step} optimizer steps, lr {self.state.lr:.3g}); "
            f"{kept}. Lower --optim.lr or set --clip-grad (e.g. 1.0), or use --nan-policy skip "
            "to drop batches whose loss is non-finite."
        )

    def lost_contact(self, error: Exception) -> LostContactError:
        last = self.run_dir / checkpoint.LAST
        kept = (
            f"The last checkpoint is {last}; continue with the same torchrun command and "
            f"--resume {last} (or --resume auto)."
            if last.exists()
            else "No checkpoint was written yet."
        )
        return LostContactError(
            f"lost contact with the other processes ({str(error).splitlines()[0]}). Another "
            "rank died (its own error is above) or did not answer within --dist-timeout "
            f"{self.config.dist_timeout:g} s. {kept}"
        )

    # --- runtime.json --------------------------------------------------------------------

    def apply_runtime_settings(self) -> None:
        """Apply an edited runtime.json (read at each epoch's start, by rank 0 for all); a bad
        edit is logged and ignored rather than ending a long run."""
        scale = self.dist.run_on_main(self._read_lr_scale)
        progress = self.state.progress
        if scale is not None and scale != progress.lr_scale:
            self.logger.info(
                "runtime.json: lr_scale %g -> %g from epoch %d",
                progress.lr_scale,
                scale,
                progress.epoch + 1,
            )
            self.state.set_lr_scale(scale)

    def _read_lr_scale(self) -> float | None:
        path = self.run_dir / RUNTIME
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as error:
            self.logger.info("runtime.json ignored: %s", error)
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or "lr_scale" not in data:
                raise ValueError('it must be a JSON object such as {"lr_scale": 1.0}')
            scale = data["lr_scale"]
            low, high = LR_SCALE_RANGE
            # JSON's NaN, Infinity and 1e400 parse as floats; none may reach the optimizer.
            number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
            if not (number and low < scale <= high):
                raise ValueError(
                    f"lr_scale is {scale!r}; it must be a number in ({low:g}, {high:g}]"
                )
        except ValueError as error:
            if text != self._ignored_runtime:  # said once per edit, not every epoch
                self.logger.info("runtime.json ignored: %s", error)
                self._ignored_runtime = text
            return None
        return float(scale)
