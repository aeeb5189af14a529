"""``training.log`` and the console: one logger, the run's header, its config file."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from toolbox.config.plain import to_plain
from toolbox.config.training import TrainingConfig
from toolbox.records.atomic import write_json
from toolbox.records.layout import CONFIG


class _FileOnlyFilter(logging.Filter):
    """Keeps records marked ``extra={"file_only": True}`` (model summary, config) off the
    console, and progress lines off it while a live progress bar shows them."""

    def __init__(self, live: bool) -> None:
        super().__init__()
        self.live = live

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        return not (self.live and getattr(record, "progress", False))


class _ConsoleHandler(logging.Handler):
    def __init__(self, console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)


def setup_logging(log_path: Path | None, console, live: bool) -> logging.Logger:
    """The ``toolbox`` logger: every line to ``training.log`` (appended), the console lines
    to ``console``."""
    logger = logging.getLogger("toolbox")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    console_handler = _ConsoleHandler(console)
    console_handler.addFilter(_FileOnlyFilter(live))
    logger.addHandler(console_handler)
    if log_path is not None:
        file_handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def close_logging(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def describe_run(
    logger: logging.Logger,
    run_dir: Path,
    config: TrainingConfig,
    model: torch.nn.Module,
    splits,
    env: dict,
    *,
    resumed_at: tuple[int, int, int] | None,
    skipped_init_keys: list[str],
) -> None:
    """The run's header in the log: what trains on what, where, and from which state; the
    file also gets the architecture, the config and the environment."""
    if resumed_at is None:
        logger.info("run %s", run_dir)
    else:
        epoch, position, num_batches = resumed_at
        within = f", batch {position + 1} of {num_batches}" if position else ""
        logger.info("resuming %s at epoch %d%s", run_dir, epoch + 1, within)
    info = splits.info
    logger.info(
        "%s on %s: %s train / %s val samples, input %s, %d outputs (%s)",
        config.arch,
        config.dataset,
        f"{splits.count('train'):,}",
        f"{splits.count('val'):,}",
        "x".join(map(str, info.input_shape)),
        info.num_outputs,
        info.task,
    )
    num_params = sum(p.numel() for p in model.parameters())
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "model: %s parameters (%s trainable); device %s (%s), precision %s%s",
        f"{num_params:,}",
        f"{num_trainable:,}",
        env["device"],
        env["device_name"],
        config.precision,
        ", compiled" if config.compile else "",
    )
    if config.init_from is not None and resumed_at is None:
        skipped = f"; skipped (shape differs or absent): {', '.join(skipped_init_keys)}"
        logger.info("initialised from %s%s", config.init_from, skipped if skipped_init_keys else "")
    logger.info("architecture:\n%s", model, extra={"file_only": True})
    logger.info("config: %s", to_plain(config), extra={"file_only": True})
    logger.info("environment: %s", env, extra={"file_only": True})


def save_config(run_dir: Path, config: TrainingConfig) -> None:
    write_json(run_dir / CONFIG, to_plain(config))
