"""lr_finder: a learning-rate range test before training, with a plot and a suggested rate."""

from __future__ import annotations

import copy
import csv
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from toolbox.callbacks import Callback, CallbackConfig, register_callback


@register_callback("lr_finder")
@dataclass(frozen=True)
class LRFinder(CallbackConfig):
    """Before a new run's first step, train for `steps` steps with the learning rate growing
    exponentially from min-lr to max-lr, write lr_finder.png and lr_finder.csv in the run
    directory and the suggested rate (steepest fall of the smoothed loss) in the log; then
    the model, optimizer, random streams and data order are put back as they were."""

    min_lr: float = 1e-7
    """The first learning rate tried."""
    max_lr: float = 10.0
    """The last learning rate tried."""
    steps: int = 100
    """Optimizer steps of the test."""
    stop_factor: float = 4.0
    """End the test early once the smoothed loss exceeds this many times its best."""
    apply: bool = False
    """Train with the suggested rate (as --optim.lr) instead of the configured one."""

    def problems(self) -> list[str]:
        found = self.not_positive("steps", "stop_factor")
        if not 0 < self.min_lr < self.max_lr < math.inf:
            found.append(
                f"{self.option('min_lr')} {self.min_lr} and {self.option('max_lr')} "
                f"{self.max_lr}: give 0 < min-lr < max-lr, both finite."
            )
        return found

    def build(self) -> Callback:
        return LRRangeTest(self)


SMOOTHING = 0.98
"""The weight of the past in the loss's exponential moving average."""


class LRRangeTest(Callback):
    """Runs the range test at the start of a new run, on every rank (its steps all-reduce
    gradients under torchrun, and every rank must apply the same rate)."""

    all_ranks = True

    def __init__(self, options: LRFinder) -> None:
        self.options = options
        self.done = False
        self.suggestion: float | None = None

    def on_fit_start(self, trainer) -> None:
        if self.done or trainer.state.progress.step != 0:
            return  # tested already, or added to a resumed run that has trained
        started = time.perf_counter()
        with state_put_back(trainer):
            lrs, losses = self._sweep(trainer)
        smoothed = smoothed_losses(losses)
        self.suggestion = steepest_descent(lrs, smoothed)
        self.done = True
        seconds = time.perf_counter() - started
        if trainer.dist.is_main:
            write_table(trainer.run_dir / "lr_finder.csv", lrs, losses, smoothed)
            draw(trainer.run_dir / "lr_finder.png", lrs, smoothed, self.suggestion)
        self._report(trainer, len(lrs), seconds)
        if self.options.apply and self.suggestion is not None:
            self._apply(trainer)

    def _sweep(self, trainer) -> tuple[list[float], list[float]]:
        """The test's steps: each at its rate, on the next batches; returns the rates and
        losses (averaged over the ranks) up to the step that ended it."""
        options, state = self.options, trainer.state
        accumulation = trainer.config.grad_accum
        batches = endless(state.train_loader)
        lrs, losses = [], []
        best = math.inf
        trainer.runner.train()
        for index in range(options.steps):
            fraction = index / (options.steps - 1) if options.steps > 1 else 0.0
            lr = options.min_lr * (options.max_lr / options.min_lr) ** fraction
            set_lr(state, lr)
            loss = self._train_step(trainer, batches, accumulation)
            lrs.append(lr)
            losses.append(loss)
            latest = smoothed_losses(losses)[-1]
            if not math.isfinite(latest) or latest > options.stop_factor * best:
                break
            best = min(best, latest)
        return lrs, losses

    @staticmethod
    def _train_step(trainer, batches: Iterator[dict], accumulation: int) -> float:
        """One optimizer step through the trainer's own forward and backward (autocast, the
        normalizer, augmentation, DDP, a model's own optimizers); its mean loss, agreed on
        by every rank (one host sync), NaN when --nan-policy skip dropped a batch."""
        import torch

        from toolbox.data.loaders import to_device
        from toolbox.models.steps import MAIN_LOSS

        state = trainer.state
        total = torch.zeros((), device=trainer.device)
        for position in range(accumulation):
            batch = next(batches)
            if not trainer.batches_on_device:
                batch = to_device(batch, trainer.device)
            result = trainer._forward_backward(batch, accumulation, position == accumulation - 1)
            if result is None:
                total += math.nan
                continue
            total += result[0][MAIN_LOSS].detach().float()
        if trainer.optimization is not None:  # the model stepped its optimizers itself
            trainer.optimization.end_step()
        else:
            # As the trainer's step, without its schedule, weight average and listeners.
            if trainer.config.clip_grad is not None:
                state.scaler.unscale_(state.optimizer)
                torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.clip_grad)
            state.scaler.step(state.optimizer)
            state.scaler.update()
            state.optimizer.zero_grad(set_to_none=True)
        trainer.dist.all_reduce(total)
        return float(total) / accumulation / trainer.dist.world_size

    def _report(self, trainer, steps: int, seconds: float) -> None:
        options, logger = self.options, trainer.logger
        span = f"{steps} steps from lr {options.min_lr:g} to {options.max_lr:g} in {seconds:.1f}s"
        if self.suggestion is None:
            logger.info("lr_finder: no suggestion (%s: fewer than two finite losses)", span)
            return
        where = " (see lr_finder.png)" if trainer.dist.is_main else ""
        logger.info(
            "lr_finder: suggested lr %.3g (steepest descent of the smoothed loss; %s)%s",
            self.suggestion,
            span,
            where,
        )

    def _apply(self, trainer) -> None:
        """Every rate of the run scaled so that its peak is the suggestion."""
        peak = peak_lr(trainer.state)
        trainer.state.scale_lr(self.suggestion / peak)
        trainer.logger.info(
            "lr_finder: training with peak lr %.3g (the suggestion) instead of %g "
            "(--callback.lr-finder.apply)",
            self.suggestion,
            peak,
        )

    def state_dict(self) -> dict:
        return {"done": self.done, "suggestion": self.suggestion}

    def load_state_dict(self, state: dict) -> None:
        self.done, self.suggestion = state["done"], state["suggestion"]


def endless(loader) -> Iterator[dict]:
    """The loader's batches, epoch after epoch (a test longer than an epoch goes on)."""
    while True:
        yield from loader


def set_lr(state, lr: float) -> None:
    for entry in state.optimizers.values():
        for group in entry.optimizer.param_groups:
            group["lr"] = lr


def peak_lr(state) -> float:
    """The configured peak rate of the first optimizer (what --optim.lr sets), which the
    suggestion replaces; the others keep their ratio to it."""
    return next(iter(state.optimizers.values())).optim.lr


@contextmanager
def state_put_back(trainer) -> Iterator[None]:
    """Within the block the test may train; afterwards the weights, the optimizers and
    their schedules, the gradient scaler, the random streams and the data order are as they
    were, so that the run trains as it would have without the test. (The weight average,
    the progress and the records are not touched by the test, and its steps reach no
    listener.)"""
    import numpy as np
    import torch

    state = trainer.state
    # The weights are kept on the host: a copy beside them could not fit a large model.
    weights = {
        name: tensor.to("cpu", copy=True) for name, tensor in state.model.state_dict().items()
    }
    optimizers = {
        name: (
            copy.deepcopy(entry.optimizer.state_dict()),
            copy.deepcopy(entry.scheduler.state_dict()),
        )
        for name, entry in state.optimizers.items()
    }
    scaler = copy.deepcopy(state.scaler.state_dict())
    loader = state.train_loader.state_dict()
    augment = state.augment.state_dict() if state.augment is not None else None
    streams = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_streams = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = trainer.runner.training
    # A model that steps its own optimizers tells the listeners of each step (grad_norm
    # would log the test's steps as the run's first ones): during the test nobody listens.
    listeners, trainer.events = trainer.events, type(trainer.events)()
    try:
        yield
    finally:
        trainer.events = listeners
        state.model.load_state_dict(weights)
        for name, (optimizer, scheduler) in optimizers.items():
            state.optimizers[name].optimizer.load_state_dict(optimizer)
            state.optimizers[name].scheduler.load_state_dict(scheduler)
        if scaler:  # a disabled scaler's state is empty, and loading it is refused
            state.scaler.load_state_dict(scaler)
        state.train_loader.load_state_dict(loader)
        if augment is not None:
            state.augment.load_state_dict(augment)
        random.setstate(streams[0])
        np.random.set_state(streams[1])
        torch.set_rng_state(streams[2])
        if cuda_streams is not None:
            torch.cuda.set_rng_state_all(cuda_streams)
        trainer.runner.train(was_training)


def smoothed_losses(losses: list[float]) -> list[float]:
    """The losses' exponential moving average, bias-corrected (its early values are not
    pulled towards 0)."""
    average, smoothed = 0.0, []
    for count, loss in enumerate(losses, 1):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed.append(average / (1 - SMOOTHING**count))
    return smoothed


def steepest_descent(lrs: list[float], smoothed: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest against log(lr) (None with fewer than
    two finite points)."""
    import numpy as np

    finite = [(lr, loss) for lr, loss in zip(lrs, smoothed, strict=True) if math.isfinite(loss)]
    if len(finite) < 2:
        return None
    rates, values = np.array(finite).T
    slopes = np.gradient(values, np.log(rates))
    return float(rates[int(np.argmin(slopes))])


def write_table(path: Path, lrs: list[float], losses: list[float], smoothed: list[float]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["lr", "loss", "smoothed"])
        writer.writerows(zip(lrs, losses, smoothed, strict=True))


def draw(path: Path, lrs: list[float], smoothed: list[float], suggestion: float | None) -> None:
    """The smoothed loss against the rate (log scale), the suggestion marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    axis.plot(lrs, smoothed, color="C0")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss (smoothed)")
    if suggestion is not None:
        axis.axvline(suggestion, color="C3", linestyle="--", label=f"suggested lr {suggestion:.3g}")
        axis.legend()
    finite = [loss for loss in smoothed if math.isfinite(loss)]
    if finite:  # the diverged end would squash the curve: show up to twice its start
        top = min(max(finite), finite[0] + abs(finite[0]))
        if top > min(finite):
            axis.set_ylim(top=top + 0.05 * (top - min(finite)))
    figure.tight_layout()
    figure.savefig(path)
