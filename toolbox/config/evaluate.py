"""test.py's options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate a trained run on its test (or validation) split. Options of the run's model
    that change no weight may follow and override the run's (e.g. --model.sampler ddpm
    --model.sample-steps 1000 for ddpm)."""

    run: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="RUN_DIR_OR_CHECKPOINT")]
    """A run directory (outputs/<run>) or a checkpoint file inside one."""
    split: Literal["test", "val"] = "test"
    """Split to evaluate."""
    checkpoint: Literal["best", "last"] = "best"
    """Which checkpoint of a run directory: model_best.pth.tar or checkpoint.pth.tar (ignored
    when a checkpoint file is given)."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps."""
    batch_size: int | None = None
    """Evaluation batch size, in samples (None: the run's --eval-batch-size)."""
    ema: bool = True
    """Evaluate the moving average of the weights of a run trained with --ema-decay, as its
    own evaluations did (--no-ema: the trained weights)."""
