"""Loggers (trackers): TensorBoard, MLflow, W&B. The recorder fans the run's values out to
the sinks of the loggers that ``--loggers`` names; the run's own record (metrics.csv,
training.log, run.json, curves.png) is written whatever they are.

A logger is a frozen config registered here, whose ``build`` returns its ``Sink``. Its
library is imported inside ``check`` and ``build``, so that ``--help`` and the config
layer stay light; ``package`` names it, and ``problems`` of the training config refuses a
logger whose package is not installed before anything is made."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from toolbox.component import Component
from toolbox.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class TrackedRun:
    """What a logger's sink is built from: the run as its recorder knows it."""

    run_dir: Path
    params: dict[str, Any]
    """The config as dotted keys (``optim.lr``) with JSON values, as ``runs show`` lists it."""
    notes: str
    tags: tuple[str, ...]
    resumed_step: int | None
    """The optimizer step a resumed session continues from (None: a new run)."""
    saved: dict[str, Any]
    """What this logger's sink kept in run.json in the last session (``Sink.state``; {}
    for a new run, or a logger the run did not use before)."""


class Sink:
    """A logger the recorder fans out to; each call does nothing unless overridden. A call
    that raises disables the sink for the rest of the session (the recorder warns once)."""

    def state(self) -> dict[str, Any]:
        """What run.json keeps so that a resumed run continues this tracker's run (its id)."""
        return {}

    def evaluation(self, row: Mapping[str, float | int]) -> None:
        """An evaluation's metrics.csv row (its ``step`` is the optimizer step)."""

    def step_loss(self, loss: float, step: int) -> None:
        """The mean training loss of the last --log-every steps, at optimizer step ``step``."""

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """A callback's named values at optimizer step ``step`` (e.g. grad_norm)."""

    def histograms(self, model: torch.nn.Module, epoch: int, grad_scale: float) -> None:
        """Weights and gradients (still scaled by ``grad_scale``) after ``epoch`` epochs."""

    def images(self, images: Mapping[str, torch.Tensor], step: int) -> None:
        """Images by tag, each a (C, H, W) tensor in [0, 1] (e.g. the training samples)."""

    def figures(self, figures: Mapping[str, Any], epoch: int, step: int) -> None:
        """A model's figures after ``epoch`` epochs (optimizer step ``step``): image tensors
        (C, H, W) in [0, 1] or matplotlib figures (which may be closed: save them, do not
        draw them)."""

    def end_of_run(self, config_plain: dict, final: dict[str, float], epoch: int) -> None:
        """The run's config (``to_plain``) with its final values, once the last epoch is done."""

    def close(self, status: str) -> None:
        """The session ends: ``status`` finished, interrupted or failed."""


@dataclass(frozen=True)
class LoggerConfig(Component):
    package: ClassVar[str | None] = None
    """The Python package the logger needs beyond the toolbox's own dependencies."""
    extra: ClassVar[str | None] = None
    """The optional extra of pyproject.toml that installs ``package``."""

    def missing_package(self) -> str | None:
        """Why the logger cannot run here (its package is not installed), or None."""
        if self.package is None or importlib.util.find_spec(self.package) is not None:
            return None
        return (
            f"--loggers {self.registered_name} needs the {self.package} package, which is not "
            f"installed; install it with: uv sync --extra {self.extra} (or pip install "
            f"{self.package}), or choose other --loggers."
        )

    def check(self, runs_dir: Path) -> None:
        """Raise a UserError if the logger cannot record a run kept under ``runs_dir`` (its
        store cannot be opened, ...): called before the run directory is made."""

    def build(self, run: TrackedRun) -> Sink:
        raise NotImplementedError


def image_array(image: Any) -> np.ndarray:
    """An image tensor (C, H, W) in [0, 1], or a matplotlib figure (closed or not), as the
    RGB (H, W, 3) uint8 array that MLflow and W&B take."""
    import numpy as np

    if hasattr(image, "savefig"):
        from PIL import Image

        png = io.BytesIO()
        image.savefig(png, format="png", dpi=100)  # as the run directory's <name>.png
        png.seek(0)
        return np.asarray(Image.open(png).convert("RGB"))
    pixels = image.detach().float().cpu().clamp(0, 1).mul(255).round().byte()
    return pixels.expand(3, -1, -1).permute(1, 2, 0).numpy()  # grey to RGB


LOGGERS: Registry[LoggerConfig] = Registry("logger", __name__, LoggerConfig, "--loggers")
register_logger = LOGGERS.register
