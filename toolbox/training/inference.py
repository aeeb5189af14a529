"""A trained run's model outside the trainer: in eval mode, taking raw inputs as the
dataset stores them (uint8 pixels, unscaled table features), its normalisation folded in."""

from __future__ import annotations

from pathlib import Path

import torch

from toolbox.datasets import DatasetInfo
from toolbox.errors import UserError


class RawInputModel(torch.nn.Module):
    """``model(normalise(inputs))``: the per-channel (or per-feature) mean and std of the
    training split are buffers, so they move, save and export with the weights."""

    def __init__(self, model: torch.nn.Module, info: DatasetInfo, config=None) -> None:
        """``config``: the run's TrainingConfig, kept for what reads its inputs."""
        super().__init__()
        self.model = model
        self.info = info
        self.config = config
        channels = len(info.mean)
        shape = (1, channels) + (1,) * (len(info.input_shape) - 1) if channels > 1 else (1,)
        self.register_buffer("mean", torch.tensor(info.mean).reshape(shape))
        self.register_buffer("inv_std", 1.0 / torch.tensor(info.std).reshape(shape))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model((inputs.float() - self.mean) * self.inv_std)


def checkpoint_of(run: Path, which: str = "best") -> Path:
    """The checkpoint a run directory's ``which`` ("best" or "last") names, or ``run`` itself
    when it is a checkpoint file."""
    from toolbox.records import checkpoint

    run = Path(run)
    if not run.is_dir():
        if not run.is_file():
            raise UserError(f"{run} does not exist; give a run directory (outputs/<run>).")
        return run
    name = checkpoint.BEST if which == "best" else checkpoint.LAST
    if not (run / name).is_file():
        if which == "best" and (run / checkpoint.LAST).is_file():
            return run / checkpoint.LAST  # a run stopped before its first evaluation
        raise UserError(f"{run} has no {name}; is it a run directory (outputs/<run>)?")
    return run / name


def load_trained_model(
    run: Path | str, checkpoint: str = "best", device: str = "cpu", ema: bool = True
) -> RawInputModel:
    """The run's model (its weight average when it keeps one and ``ema``), in eval mode on
    ``device``. The dataset's statistics come from the checkpoint; a checkpoint written
    before they were saved builds the dataset to read them."""
    from toolbox.config.plain import from_plain
    from toolbox.records import checkpoint as checkpoints
    from toolbox.training.runtime import resolve_device

    path = checkpoint_of(Path(run), checkpoint)
    state = checkpoints.load_checkpoint(path)
    config = from_plain(state["config"], f"the config in {path}")
    saved_info = state.get("data_info")
    if saved_info is not None:
        info = DatasetInfo(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in saved_info.items()
            }
        )
    else:
        info = config.data.build().info
    model = config.model.build(info)
    weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
    checkpoints.load_model_state(model, weights, str(path), strict=True)
    return RawInputModel(model, info, config).to(resolve_device(device)).eval()
