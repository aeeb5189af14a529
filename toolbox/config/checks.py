"""The checks run before anything is built: every problem of a config in one pass."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import timedelta

from toolbox.callbacks import CALLBACKS
from toolbox.config.training import DEVICE_PATTERN, NO_LOGGER, SLOTS, TrainingConfig
from toolbox.criteria import CRITERIA
from toolbox.errors import UserError
from toolbox.loggers import LOGGERS
from toolbox.metrics import METRICS

TAG_PATTERN = re.compile(r"[\w.:/ -]{1,64}")
"""A --tags label: up to 64 letters, digits, spaces and ``_ . : / -``, which every tracker
takes (W&B's tags are 64 characters at most; MLflow's tag names allow only these)."""


def problems(config: TrainingConfig) -> list[str]:
    """Every problem with ``config``, each naming the option, its value and the fix."""
    found = []
    counts = {
        1: ("batch_size", "eval_batch_size", "grad_accum", "eval_every", "log_every"),
        0: (
            "num_workers",
            "checkpoint_every_steps",
            "keep_last",
            "max_nan_skips",
            "histogram_every",
            "max_steps",
            "eval_every_steps",
            "limit_train_batches",
            "limit_val_batches",
        ),
    }
    for minimum, names in counts.items():
        for name in names:
            value = getattr(config, name)
            if value < minimum:
                bound = "at least 1" if minimum else "0 or more"
                found.append(f"--{name.replace('_', '-')} is {value}; it must be {bound}.")
    found.extend(_length_problems(config))
    # Chained comparisons also catch nan. The timeout becomes a timedelta under torchrun,
    # which overflows past 999,999,999 days.
    longest_timeout = timedelta.max.total_seconds()
    if not 0 < config.dist_timeout <= longest_timeout:
        found.append(
            f"--dist-timeout is {config.dist_timeout}; give a positive number of seconds up to "
            f"{longest_timeout:.3g} (e.g. 600)."
        )
    if any(epoch < 1 for epoch in config.save_at):
        found.append(f"--save-at is {' '.join(map(str, config.save_at))}; epochs count from 1.")

    if not 0 <= config.seed < 2**32:
        found.append(f"--seed is {config.seed}; it must be in [0, 2**32) (numpy's range).")
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        found.append(
            f"--ema-decay is {config.ema_decay}; give a decay in (0, 1), e.g. 0.999 (an average "
            "over about the last 1000 steps), or None for no average."
        )
    if config.clip_grad is not None and not 0 < config.clip_grad < math.inf:
        found.append(
            f"--clip-grad is {config.clip_grad}; give a positive, finite norm (e.g. 1.0), or "
            "None for no clipping."
        )
    if not DEVICE_PATTERN.fullmatch(config.device):
        found.append(
            f"--device is {config.device!r}; use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps."
        )
    if config.run_name is not None and (
        not config.run_name or "/" in config.run_name or config.run_name in (".", "..")
    ):
        found.append(f"--run-name is {config.run_name!r}; give a plain directory name (no '/').")
    for slot in SLOTS:
        found.extend(getattr(config, slot).problems())
    found.extend(_logger_problems(config))
    found.extend(_callback_problems(config))

    task = config.data.task
    # A dataset that learns its task from its files ("auto") before it is given any has
    # nothing to check against: its own problems, or build(), say what is missing.
    known = task in ("classification", "regression")
    if known and task not in config.loss.tasks and not config.model.own_steps:
        found.append(
            f"--criterion {config.criterion} does not apply to the {task} dataset "
            f"{config.dataset!r}; use one of: "
            + ", ".join(n for n in CRITERIA.names() if task in CRITERIA.get(n).tasks)
            + "."
        )
    for name in config.metrics:
        if known and task not in METRICS.get(name).tasks:
            found.append(
                f"--metrics {name} does not apply to the {task} dataset {config.dataset!r}; "
                "use some of: "
                + ", ".join(n for n in METRICS.names() if task in METRICS.get(n).tasks)
                + "."
            )
    if len(set(config.metrics)) != len(config.metrics):
        found.append(f"--metrics {' '.join(config.metrics)} names a metric twice.")
    allowed = ["val_loss"] + [f"val_{name}" for name in config.metrics]
    if config.monitor not in allowed:
        found.append(
            f"--monitor is {config.monitor!r}; it must be one of {', '.join(allowed)} "
            "(a metric must also be listed in --metrics)."
        )
    return found


def _length_problems(config: TrainingConfig) -> list[str]:
    """How long the run trains: --epochs or --max-steps (or --fast-dev-run), not two."""
    found = []
    if config.epochs is not None and config.epochs < 1:
        found.append(f"--epochs is {config.epochs}; it must be at least 1.")
    given = [
        option
        for option, on in (
            (f"--epochs {config.epochs}", config.epochs is not None),
            (f"--max-steps {config.max_steps}", config.max_steps > 0),
            ("--fast-dev-run", config.fast_dev_run),
        )
        if on
    ]
    if len(given) > 1:
        found.append(
            f"{' and '.join(given)} both say how long to train; give one of --epochs, "
            "--max-steps and --fast-dev-run."
        )
    return found


def _callback_problems(config: TrainingConfig) -> list[str]:
    """--callbacks names known callbacks once each, whose options are sound; options of a
    callback it does not name are refused (they would silently do nothing)."""
    unknown = [name for name in config.callbacks if name not in CALLBACKS]
    found = [CALLBACKS.unknown_message(name) for name in unknown]
    if len(set(config.callbacks)) != len(config.callbacks):
        found.append(f"--callbacks {' '.join(config.callbacks)} names a callback twice.")
    for option_group in dataclasses.fields(config.callback):
        name, options = option_group.name, getattr(config.callback, option_group.name)
        if name in config.callbacks:
            found += options.problems()
            continue
        changed = [
            options.option(f.name)
            for f in dataclasses.fields(options)
            if getattr(options, f.name) != f.default
        ]
        if changed:
            found.append(
                f"{', '.join(changed)} given, but --callbacks does not name {name}; add "
                f"--callbacks {' '.join((*config.callbacks, name))}, or drop the option."
            )
    return found


def _logger_problems(config: TrainingConfig) -> list[str]:
    """--loggers names known, installed loggers (or none), whose options are sound; --tags
    are labels every tracker takes."""
    found = []
    names = config.loggers
    unknown = [name for name in names if name != NO_LOGGER and name not in LOGGERS]
    found += [
        f"{LOGGERS.unknown_message(name).removesuffix('.')} (or {NO_LOGGER})." for name in unknown
    ]
    if NO_LOGGER in names and len(names) > 1:
        found.append(
            f"--loggers {' '.join(names)}: {NO_LOGGER} means no tracker; give it alone, or "
            "only the trackers."
        )
    if len(set(names)) != len(names):
        found.append(f"--loggers {' '.join(names)} names a logger twice.")
    if not unknown:
        for logger in config.logger_configs:
            missing = logger.missing_package()
            found += [missing] if missing else logger.problems()
    bad_tags = [tag for tag in config.tags if not TAG_PATTERN.fullmatch(tag)]
    if bad_tags:
        found.append(
            f"--tags {' '.join(map(repr, bad_tags))}: a tag has 1 to 64 letters, digits, "
            "spaces and _ . : / - (e.g. baseline, lr-sweep)."
        )
    return found


def validate(config: TrainingConfig) -> None:
    found = problems(config)
    if found:
        raise UserError("Invalid configuration:\n  - " + "\n  - ".join(found))
