"""TensorBoard: event files in the run directory (``tensorboard --logdir outputs``).

Its sink writes through the records' TensorBoard extras (toolbox.records.tensorboard), so
this module sits in the records layer; the registry finds it by name, and nothing below
that layer imports it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolbox.loggers import LoggerConfig, Sink, TrackedRun, register_logger
from toolbox.records import tensorboard

if TYPE_CHECKING:
    import torch


@register_logger("tensorboard")
@dataclass(frozen=True)
class TensorBoard(LoggerConfig):
    """Scalars by epoch, the loss by step, histograms, figures and the HPARAMS tab."""

    def build(self, run: TrackedRun) -> Sink:
        return TensorBoardSink(run.run_dir, run.resumed_step)


class TensorBoardSink(Sink):
    """TensorBoard event files in the run directory."""

    def __init__(self, run_dir: Path, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops points a crashed session logged after its last checkpoint.
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)

    def evaluation(self, row: Mapping[str, float | int]) -> None:
        epoch = row["epoch"]
        self.writer.add_scalar("lr", row["lr"], epoch)
        for name, value in row.items():
            if name.startswith(("train_", "val_")):  # train_loss -> train/loss
                self.writer.add_scalar(name.replace("_", "/", 1), value, epoch)
        self.writer.flush()

    def step_loss(self, loss: float, step: int) -> None:
        self.writer.add_scalar("train/loss_step", loss, step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for name, value in values.items():
            # A bare name (grad_norm) joins the training curves; a grouped one keeps its group.
            tag = name if "/" in name else f"train/{name}"
            self.writer.add_scalar(tag, value, step)

    def histograms(self, model: torch.nn.Module, epoch: int, grad_scale: float) -> None:
        tensorboard.log_histograms(self.writer, model, epoch, grad_scale=grad_scale)

    def images(self, images: Mapping[str, torch.Tensor], step: int) -> None:
        for tag, image in images.items():
            self.writer.add_image(tag, image, step, dataformats="CHW")
        self.writer.flush()

    def figures(self, figures: Mapping[str, Any], epoch: int, step: int) -> None:
        tensorboard.add_figures(self.writer, figures, epoch)

    def end_of_run(self, config_plain: dict, final: dict[str, float], epoch: int) -> None:
        tensorboard.log_hparams(self.writer, config_plain, final, step=epoch)

    def close(self, status: str) -> None:
        self.writer.close()
