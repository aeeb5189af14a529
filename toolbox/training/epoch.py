"""One epoch of the training loop: batch -> forward under autocast -> loss -> backward ->
clip -> step -> log, with the checkpoints and evaluations due within the epoch.

``EpochLoop`` is the part of the Trainer (toolbox.training.trainer) that trains an epoch; it
reads the attributes the Trainer sets up (state, runner, events, recorder, stopper, ...) and
calls back its evaluation and saving (``_evaluate``, ``_save``, ``_stop_if_requested``)."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from toolbox.data.loaders import to_device
from toolbox.models.steps import MAIN_LOSS
from toolbox.records import checkpoint
from toolbox.training.display import ProgressDisplay
from toolbox.training.runtime import autocast
from toolbox.training.state import MAIN_OPTIMIZER
from toolbox.training.stopping import loss_became_non_finite
from toolbox.training.window import LossWindow


class EpochLoop:
    """The Trainer's epoch: its batches, their steps and what is due between them."""

    def _train_epoch(self, epoch_idx: int, display: ProgressDisplay) -> str | None:
        """One epoch, from the resume position when resuming mid-epoch, cut short at
        --max-steps; returns the reason of a stop asked for at a mid-epoch evaluation (whose
        checkpoint is then written)."""
        config, state, progress = self.config, self.state, self.state.progress
        loader = state.train_loader
        self.runner.train()
        epoch_label = f"epoch {epoch_idx + 1}/{state.epochs}"
        num_batches = len(loader)
        window = LossWindow(
            self.loss_names,
            progress,
            self.dist.all_reduce,
            lambda batch_idx: self.stopper.diverged(loss_became_non_finite(epoch_idx, batch_idx)),
            self.train_metric_names,
        )
        for batch_idx, batch in enumerate(loader, loader.resume_batch):
            if not self.batches_on_device:
                batch = to_device(batch, self.device)
            group_start = batch_idx - batch_idx % config.grad_accum
            group_size = min(config.grad_accum, num_batches - group_start)
            steps_now = batch_idx + 1 - group_start == group_size
            result = self._forward_backward(batch, group_size, steps_now)
            if result is not None:
                losses, outputs = result
                window.add(
                    batch_idx, len(batch["input"]), losses, self._metric_sums(batch, outputs)
                )
            else:
                self._skip_batch(epoch_label, epoch_idx, batch_idx, steps_now)
            if not steps_now:
                continue  # accumulate more gradients before stepping
            self._optimizer_step(epoch_idx, at_epoch_end=batch_idx + 1 == num_batches)
            display.advance()
            self.events.emit("step_end", progress.step)
            if config.compile and not self.compiled_warm:
                self._time_compilation(window)
            if progress.step % config.log_every == 0:
                self._report_interval(window, display, epoch_label)
            if batch_idx + 1 == num_batches or progress.step == state.total_steps:
                break  # the epoch's (or the run's) end evaluates and saves in _train
            if config.eval_every_steps and progress.step % config.eval_every_steps == 0:
                window.flush()
                self._evaluate(display)
                self.runner.train()
                stop_reason = self._agreed_stop_request()
                if stop_reason:
                    self._save(checkpoint.LAST)
                    return stop_reason
            self._checkpoint_or_stop_within_epoch(window)
        window.flush()
        return None

    def _forward_backward(
        self, batch: dict[str, torch.Tensor], group_size: int, steps_now: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """The training step and its backward; returns its named losses (device scalars) and
        outputs, or None when --nan-policy skip drops the batch (its loss is non-finite on
        some rank)."""
        inputs = batch["input"] if self.augment is None else self.augment(batch["input"])
        if self.optimization is not None:  # the model's step runs its own backward passes
            self.optimization.start_batch(group_size, steps_now)
            with autocast(self.device, self.config.precision):
                return self.runner({**batch, "input": self.normalizer(inputs)}, True)
        # Only the last batch of an accumulation group all-reduces its gradients.
        with self.ddp.no_sync() if self.ddp and not steps_now else nullcontext():
            with autocast(self.device, self.config.precision):
                losses, outputs = self.runner({**batch, "input": self.normalizer(inputs)}, True)
            loss = losses[MAIN_LOSS].float()  # fp16's loss scale overflows in half precision
            if self.config.nan_policy == "skip" and not self.dist.all_ranks_true(
                bool(torch.isfinite(loss).item()),
                self.device,  # the policy's sync per batch
            ):
                return None
            self.state.scaler.scale(loss / group_size if group_size > 1 else loss).backward()
        return losses, outputs

    def _metric_sums(
        self, batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]
    ) -> list[tuple[torch.Tensor, int]]:
        """--metrics' (sum, count) on a training batch, on the device (none without a
        prediction in the training step's outputs)."""
        prediction = outputs.get("prediction")
        if not self.train_metric_names or prediction is None:
            return []
        with torch.no_grad():
            output = prediction.detach().float()
            return [
                self.metrics[name].batch_sum(output, batch["target"])
                for name in self.train_metric_names
            ]

    def _skip_batch(
        self, epoch_label: str, epoch_idx: int, batch_idx: int, steps_now: bool
    ) -> None:
        progress = self.state.progress
        progress.nan_skips += 1
        self.logger.info(
            "%s batch %d: non-finite loss, batch skipped (%d so far)",
            epoch_label,
            batch_idx + 1,
            progress.nan_skips,
        )
        if progress.nan_skips > self.config.max_nan_skips:
            raise self.stopper.diverged(loss_became_non_finite(epoch_idx, batch_idx))
        if self.ddp and steps_now:
            self.dist.average_gradients(self.model)  # the group's earlier batches skipped theirs

    def _optimizer_step(self, epoch_idx: int, at_epoch_end: bool) -> None:
        """clip -> step -> zero the gradients -> per-step schedule -> weight average; a model
        that drives its own optimizers has stepped them in its training step already."""
        config, state = self.config, self.state
        every = config.histogram_every
        histograms = every and at_epoch_end and (epoch_idx + 1) % every == 0
        if self.optimization is not None:
            self.optimization.end_step()
            if histograms:  # of the weights: its steps have zeroed the gradients
                self.recorder.histograms(self.model, epoch_idx + 1, lambda: 1.0)
        else:
            # Callbacks that read the gradients read them unscaled, as clipping does.
            listened = self.events.listens_to("before_optimizer_step")
            unscaled = config.clip_grad is not None or listened
            if unscaled:
                state.scaler.unscale_(state.optimizer)
            if config.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
            self.events.emit("before_optimizer_step", MAIN_OPTIMIZER)
            if histograms:
                # Before the step: zero_grad(set_to_none) would take the gradients away.
                self.recorder.histograms(
                    self.model,
                    epoch_idx + 1,
                    lambda: 1.0 if unscaled else state.scaler.get_scale(),
                )
            state.scaler.step(state.optimizer)
            state.scaler.update()
            state.optimizer.zero_grad(set_to_none=True)
            if config.sched.interval == "step":
                state.scheduler.step()
        state.progress.step += 1
        if state.ema is not None:
            state.ema.update(self.model, state.progress.step)

    def _time_compilation(self, window: LossWindow) -> None:
        """The first step compiles; it is timed apart so that throughput figures exclude it."""
        window.flush()
        self.logger.info(
            "torch.compile warm-up: the first step took %.1fs", time.perf_counter() - window.started
        )
        self.compiled_warm = True
        window.restart_clock()

    def _report_interval(self, window: LossWindow, display: ProgressDisplay, label: str) -> None:
        """The end of a --log-every interval: the window's one host sync, and its report."""
        mean_loss, samples = window.flush()
        if samples:
            seconds = time.perf_counter() - window.started
            means = {
                name: self.metrics[name].finalize(total, count)
                for name, (total, count) in window.metric_totals.items()
            }
            display.report(label, mean_loss, samples / seconds, means)
            self.recorder.step_loss(mean_loss, self.state.progress.step)
        window.restart_clock()

    def _checkpoint_or_stop_within_epoch(self, window: LossWindow) -> None:
        step = self.state.progress.step
        if not self.dist.enabled or step % self.config.log_every == 0:
            self.stopper.agree()  # under torchrun a collective, so once per log interval
        every = self.config.checkpoint_every_steps
        if (every and step % every == 0) or self.stopper.signal is not None:
            window.flush()  # never save a state that has taken a non-finite step
            self._stop_if_requested()
            self._save(checkpoint.LAST)
