"""Weights & Biases: the run's options as its config, metrics.csv's rows as its history by
optimizer step, the training samples and a model's figures as images. Offline by default:
the run is written under <run-dir>/wandb/ and ``wandb sync`` uploads it later."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from toolbox.errors import UserError
from toolbox.loggers import LoggerConfig, Sink, TrackedRun, image_array, register_logger

if TYPE_CHECKING:
    import torch

EXIT_CODES = {"finished": 0, "interrupted": 1, "failed": 1}
"""The exit code W&B is told for each way a session ends (any but 0 marks it failed)."""


@register_logger("wandb")
@dataclass(frozen=True)
class Wandb(LoggerConfig):
    """W&B: config, history by step, images; a resume continues the same W&B run."""

    option_prefix: ClassVar[str] = "--logger.wandb."
    package: ClassVar[str | None] = "wandb"
    extra: ClassVar[str | None] = "wandb"

    project: str = "toolbox"
    """W&B project the run belongs to."""
    entity: str | None = None
    """W&B user or team that owns the project (None: your default entity)."""
    tags: tuple[str, ...] = ()
    """W&B tags of the run, beside --tags."""
    mode: Literal["online", "offline", "disabled"] = "offline"
    """online: upload as it trains (needs wandb login); offline: write the run under
    <run-dir>/wandb/ for a later wandb sync (no network); disabled: record nothing."""

    def problems(self) -> list[str]:
        long = [tag for tag in self.tags if not 0 < len(tag) <= 64]
        if long:
            return [f"{self.option('tags')} {' '.join(long)}: W&B tags have 1 to 64 characters."]
        return []

    def check(self, runs_dir: Path) -> None:
        if self.mode != "online":
            return
        import wandb

        try:
            wandb.login(verify=False)  # asks for the key on a terminal, as wandb.init would
        except Exception as error:  # no API key, and no terminal to ask for one
            raise UserError(
                f"--logger.wandb.mode online: W&B cannot log in ({error}). Run wandb login (or "
                "set WANDB_API_KEY), or use --logger.wandb.mode offline and wandb sync later."
            ) from None

    def build(self, run: TrackedRun) -> Sink:
        return WandbSink(self, run)


class WandbSink(Sink):
    """One W&B run per toolbox run; a resumed session continues it (its id is in run.json)."""

    def __init__(self, config: Wandb, run: TrackedRun) -> None:
        import wandb

        resumed_id = run.saved.get("id")
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            name=run.run_dir.name,
            notes=run.notes or None,
            tags=list(dict.fromkeys([*run.tags, *config.tags])),
            config=run.params,
            dir=run.run_dir,
            mode=config.mode,
            id=resumed_id,
            resume="allow" if resumed_id else None,
            # training.log has the console; W&B's copy would also hold every redraw of the
            # live progress bar.
            settings=wandb.Settings(console="off"),
        )
        if resumed_id:  # the options a resumed session changed (a new --epochs)
            self.run.config.update(run.params, allow_val_change=True)
        self.sync_dir = Path(self.run.settings.sync_dir)
        if config.mode == "offline":
            logging.getLogger("toolbox").info(
                "wandb: offline run %s; upload it with: wandb sync %s",
                self.run.id,
                shlex.quote(str(self.sync_dir)),
            )

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id, "dir": str(self.sync_dir), "project": self.run.project}

    def evaluation(self, row: Mapping[str, float | int]) -> None:
        values = {name: value for name, value in row.items() if name != "step"}
        self.run.log(values, step=int(row["step"]))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        # On the evaluations' axis, the optimizer step (W&B drops a step lower than its last).
        self.run.log(dict(values), step=step)

    def images(self, images: Mapping[str, torch.Tensor], step: int) -> None:
        self._log_images(images, step)

    def figures(self, figures: Mapping[str, Any], epoch: int, step: int) -> None:
        self._log_images({f"figures/{name}": figure for name, figure in figures.items()}, step)

    def _log_images(self, images: Mapping[str, Any], step: int) -> None:
        import wandb

        self.run.log(
            {tag: wandb.Image(image_array(image)) for tag, image in images.items()}, step=step
        )

    def end_of_run(self, config_plain: dict, final: dict[str, float], epoch: int) -> None:
        self.run.summary.update(final)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=EXIT_CODES[status])
