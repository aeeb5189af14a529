"""MLflow: the run's options as params, metrics.csv's columns as metrics by optimizer step,
the training samples and a model's figures as images, --notes as the run's description."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from toolbox.errors import UserError
from toolbox.loggers import LoggerConfig, Sink, TrackedRun, image_array, register_logger

if TYPE_CHECKING:
    import torch

STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
"""MLflow's run status for each way a session ends."""


@register_logger("mlflow")
@dataclass(frozen=True)
class MLflow(LoggerConfig):
    """MLflow tracking: params, metrics by step, images; a resume continues the same run."""

    option_prefix: ClassVar[str] = "--logger.mlflow."
    package: ClassVar[str | None] = "mlflow"
    extra: ClassVar[str | None] = "mlflow"

    tracking_uri: str | None = None
    """Tracking store: sqlite:///PATH.db, http(s)://HOST:PORT (a tracking server), or file:DIR
    (MLflow 3 also wants MLFLOW_ALLOW_FILE_STORE=true for that one). None: $MLFLOW_TRACKING_URI
    if set, else sqlite:///<output-dir>/mlflow.db, one database for the runs under
    --output-dir (see them with: mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db)."""
    experiment: str = "toolbox"
    """MLflow experiment the run is recorded in (created if missing)."""
    tags: tuple[str, ...] = ()
    """MLflow tags of the run as KEY=VALUE (e.g. team=vision), beside --tags."""

    def problems(self) -> list[str]:
        found = []
        malformed = [tag for tag in self.tags if "=" not in tag or not tag.split("=")[0].strip()]
        if malformed:
            found.append(
                f"{self.option('tags')} {' '.join(malformed)}: give each tag as KEY=VALUE, "
                "e.g. team=vision."
            )
        if not self.experiment.strip():
            found.append(f"{self.option('experiment')} is empty; name an experiment.")
        return found

    def store_uri(self, runs_dir: Path) -> str:
        """The tracking store of a run kept under ``runs_dir`` (its --output-dir)."""
        return (
            self.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{runs_dir.resolve() / 'mlflow.db'}"
        )

    def check(self, runs_dir: Path) -> None:
        uri = self.store_uri(runs_dir)
        with _answering_quickly():
            try:
                from mlflow.tracking import MlflowClient

                MlflowClient(uri).get_experiment_by_name(self.experiment)
            except Exception as error:  # any store that does not open: a scheme, a path, a host
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise UserError(
                    f"--logger.mlflow.tracking-uri {uri}: the MLflow tracking store cannot be "
                    f"opened ({reason}). Give one that can: sqlite:///PATH.db in a writable "
                    "directory, or the http(s)://HOST:PORT of a running tracking server."
                ) from None

    def build(self, run: TrackedRun) -> Sink:
        return MLflowSink(self, run)


@contextmanager
def _answering_quickly() -> Iterator[None]:
    """Within the block, a tracking server that does not answer fails in seconds, not after
    MLflow's retries (minutes): the check runs before training, while the user waits. The
    user's own settings of these variables win."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    added = [name for name in quick if name not in os.environ]
    os.environ.update({name: quick[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of the store ``uri`` keeps its artifacts (the images): beside a
    SQLite database, in mlartifacts/, rather than in MLflow's default, ./mlruns of whatever
    directory the run was started from; a tracking server's own choice otherwise."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///").partition("?")[0])
        return (database.resolve().parent / "mlartifacts").as_uri()
    return None


def param_value(value: Any) -> str:
    """A config value as MLflow keeps params, as text: strings as they are, the rest as JSON
    (``null``, ``true``, ``[64, 64]``), so that they read back as the values they were."""
    return value if isinstance(value, str) else json.dumps(value)


class MLflowSink(Sink):
    """One MLflow run per toolbox run; a resumed session continues it (its id is in run.json)."""

    def __init__(self, config: MLflow, run: TrackedRun) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        logger = logging.getLogger("toolbox")
        self.uri = config.store_uri(run.run_dir.parent)
        self.client = MlflowClient(self.uri)
        self.run_id: str | None = run.saved.get("run_id")
        self.last_step = run.resumed_step or 0
        existing_params: dict[str, str] = {}
        if self.run_id is not None:
            try:
                existing_params = self.client.get_run(self.run_id).data.params
                self.client.update_run(self.run_id, status="RUNNING")
            except MlflowException:
                logger.warning(
                    "mlflow: the run's MLflow run %s (in %s) is not in %s; this session is "
                    "recorded as a new MLflow run",
                    self.run_id,
                    run.saved.get("tracking_uri"),
                    self.uri,
                )
                self.run_id = None
        if self.run_id is None:
            experiment = self.client.get_experiment_by_name(config.experiment)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(
                    config.experiment, artifact_location=artifact_location(self.uri)
                )
            )
            created = self.client.create_run(experiment_id, run_name=run.run_dir.name)
            self.run_id = created.info.run_id
        self.experiment_id = self.client.get_run(self.run_id).info.experiment_id
        # MLflow refuses to change a param: a resumed session with other options (a new
        # --epochs) keeps the first session's params; config.json and run.json have both.
        params = [
            Param(key, param_value(value))
            for key, value in run.params.items()
            if key not in existing_params
        ]
        tags = {tag: "" for tag in run.tags}  # --tags are labels: a key without a value
        tags.update(tag.split("=", 1) for tag in config.tags)
        tags["mlflow.note.content"] = run.notes  # MLflow's run description
        tags["toolbox.run_dir"] = str(run.run_dir.resolve())
        self.client.log_batch(
            self.run_id, params=params, tags=[RunTag(key, value) for key, value in tags.items()]
        )
        where = (
            f"open {self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
            if self.uri.startswith(("http:", "https:"))
            else f"mlflow ui --backend-store-uri {self.uri}"
        )
        logger.info("mlflow: run %s in %r; see it with: %s", self.run_id, config.experiment, where)

    def state(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": self.uri,
        }

    def evaluation(self, row: Mapping[str, float | int]) -> None:
        from mlflow.entities import Metric

        self.last_step = int(row["step"])
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), timestamp, self.last_step)
            for name, value in row.items()
            if name != "step"
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(name, float(value), timestamp, step) for name, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def images(self, images: Mapping[str, torch.Tensor], step: int) -> None:
        for tag, image in images.items():
            self.client.log_image(self.run_id, image_array(image), key=tag, step=step)

    def figures(self, figures: Mapping[str, Any], epoch: int, step: int) -> None:
        for name, figure in figures.items():
            key = f"figures/{name}"
            self.client.log_image(self.run_id, image_array(figure), key=key, step=step)

    def end_of_run(self, config_plain: dict, final: dict[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        # The last evaluation's values are logged already; the best one is not.
        timestamp = int(time.time() * 1000)
        best = [
            Metric(name, float(value), timestamp, self.last_step)
            for name, value in final.items()
            if name.startswith("best_")
        ]
        self.client.log_batch(self.run_id, metrics=best)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS[status])
