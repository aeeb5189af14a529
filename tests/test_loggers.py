"""--loggers: TensorBoard, MLflow (on a local SQLite store) and W&B (offline), read back with
their own readers; a resume continues the tracker's run; a tracker that fails is warned
about and left out; every mistake is one message before the run directory is made."""

from __future__ import annotations

import csv
import dataclasses
import json
import socket
import struct
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY
from toolbox.config import TrainingConfig, flat, from_plain, problems, to_plain
from toolbox.config.training import LoggerOptions
from toolbox.loggers import LOGGERS
from toolbox.loggers.mlflow import MLflow
from toolbox.loggers.wandb import Wandb


@pytest.fixture(autouse=True)
def private_trackers(tmp_path, monkeypatch):
    """The trackers write nothing outside tmp_path and need no network."""
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def json_param(value) -> str:
    """A config value as the MLflow params hold it: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


# --- MLflow ---------------------------------------------------------------------------------


def test_mlflow_records_the_config_metrics_and_tags_and_a_resume_continues_its_run(train, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [
        *TINY,
        "--epochs",
        "1",
        "--loggers",
        "mlflow",
        "--logger.mlflow.tracking-uri",
        uri,
        "--logger.mlflow.experiment",
        "tiny",
        "--logger.mlflow.tags",
        "team=vision",
        "--tags",
        "baseline",
        "--notes",
        "first try",
        "--run-name",
        "r",
    ]
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "r"
    run_id = json.loads((run_dir / "run.json").read_text())["trackers"]["mlflow"]["run_id"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "tiny"
    # The images go beside the database, not into ./mlruns of the current directory.
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert run.info.run_name == "r" and run.info.status == "FINISHED"
    config = json.loads((run_dir / "config.json").read_text())
    assert run.data.params == {key: json_param(value) for key, value in flat(config).items()}
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["loggers"] == '["mlflow"]'
    tags = run.data.tags
    assert tags["baseline"] == "" and tags["team"] == "vision"
    assert tags["mlflow.note.content"] == "first try"  # the run's description in the UI

    def assert_history_is_the_table() -> None:
        rows = csv_rows(run_dir)
        for column in rows[0]:
            if column != "step":
                history = client.get_metric_history(run_id, column)
                assert [(m.step, m.value) for m in history] == [
                    (int(row["step"]), float(row[column])) for row in rows
                ], column

    assert_history_is_the_table()
    images = [artifact.path for artifact in client.list_artifacts(run_id, "images")]
    assert any("samples~train+step+0" in path for path in images)  # the training samples

    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "2") == 0
    record = json.loads((run_dir / "run.json").read_text())
    assert record["trackers"]["mlflow"]["run_id"] == run_id  # the same MLflow run
    assert len(csv_rows(run_dir)) == 2
    assert_history_is_the_table()  # the second epoch's values appended at its step
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_models_figures_reach_mlflow_and_the_run_directory(train, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ddpm = ["--arch", "ddpm", "--model.base-channels", "8", "--model.timesteps", "20"]
    ddpm += ["--model.sample-steps", "5", "--model.num-samples", "4"]
    ddpm += ["--model.pixel-range", "-3", "3", "--data.num-train", "64", "--epochs", "1"]
    argv = [*TINY, *ddpm, "--loggers", "tensorboard", "mlflow"]
    assert train(*argv, "--logger.mlflow.tracking-uri", uri, "--run-name", "d") == 0
    run_dir = tmp_path / "outputs" / "d"
    assert (run_dir / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_id = json.loads((run_dir / "run.json").read_text())["trackers"]["mlflow"]["run_id"]
    images = [artifact.path for artifact in MlflowClient(uri).list_artifacts(run_id, "images")]
    step = csv_rows(run_dir)[-1]["step"]
    assert any(f"figures~samples+step+{step}+" in path for path in images)


def test_a_matplotlib_figure_reaches_mlflow_after_tensorboard_closed_it(tmp_path):
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient
    from PIL import Image

    from toolbox.loggers import TrackedRun

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = TrackedRun(run_dir, {"optim.lr": 0.1}, "", (), None, {})
    sinks = [LOGGERS.get(name)().build(run) for name in ("tensorboard", "mlflow")]
    figure = plt.figure(figsize=(2, 1))
    figure.gca().plot([0, 1], [1, 0])
    for sink in sinks:
        sink.figures({"curve": figure}, epoch=1, step=10)  # TensorBoard's add_figure closes it
        sink.close("finished")
    mlflow_sink = sinks[1]
    client = MlflowClient(mlflow_sink.uri)
    [png] = [
        artifact.path
        for artifact in client.list_artifacts(mlflow_sink.run_id, "images")
        if "figures~curve+step+10+" in artifact.path and artifact.path.endswith(".png")
    ]
    local = client.download_artifacts(mlflow_sink.run_id, png, str(tmp_path))
    assert Image.open(local).size == (200, 100)  # 2 x 1 inches at 100 dpi


def test_a_tracker_that_fails_mid_run_is_warned_about_once_and_the_run_finishes(
    train, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    log_batch = MlflowClient.log_batch

    def server_down(self, run_id, metrics=(), **kwargs):
        if metrics:
            raise ConnectionError("tracking server down")
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", server_down)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = [*TINY, "--epochs", "3", "--loggers", "tensorboard", "mlflow", "--run-name", "down"]
    assert train(*argv, "--logger.mlflow.tracking-uri", uri) == 0
    run_dir = tmp_path / "outputs" / "down"
    log = (run_dir / "training.log").read_text()
    assert log.count("--loggers mlflow failed (ConnectionError: tracking server down)") == 1
    assert len(csv_rows(run_dir)) == 3
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert list(run_dir.glob("events.out.tfevents.*"))  # the other logger went on


# --- Mistakes, refused before the run directory is made ----------------------------------------


@pytest.mark.parametrize(("package", "extra"), [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_tracker_that_is_not_installed_is_refused_with_the_install_command(
    train, tmp_path, monkeypatch, capsys, package, extra
):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    assert train(*TINY, "--loggers", package, "--run-name", "x") == 2
    message = capsys.readouterr().err
    assert f"uv sync --extra {extra}" in message and "Traceback" not in message
    assert not (tmp_path / "outputs" / "x").exists()


def test_an_unknown_logger_is_refused_with_the_choices(train, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:  # tyro's own message, as for any bad choice
        train(*TINY, "--loggers", "tensorbord", "--run-name", "x")
    assert exit.value.code == 2
    message = capsys.readouterr().err
    assert "tensorbord" in message and all(name in message for name in LOGGERS.names())
    # A config file is checked as well.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"loggers": ["tensorbord"]}))
    assert train(*TINY, "--config", str(path), "--run-name", "x") == 2
    message = capsys.readouterr().err
    assert "unknown logger 'tensorbord'. Did you mean 'tensorboard'?" in message
    assert not (tmp_path / "outputs" / "x").exists()


def closed_port() -> int:
    """A local port that refuses connections: bound, never listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    closed_port.socket = sock  # kept open for the test's duration
    return sock.getsockname()[1]


@pytest.mark.parametrize(
    "make_uri",
    [
        lambda tmp: f"sqlite:///{tmp}/a-file/mlflow.db",  # a directory that is a file
        lambda tmp: "nosuch://host/store",
        lambda tmp: f"http://127.0.0.1:{closed_port()}",  # a tracking server that is down
    ],
    ids=["sqlite-path", "scheme", "server-down"],
)
def test_a_tracking_store_that_cannot_be_opened_is_refused_and_nothing_is_written(
    train, tmp_path, capsys, make_uri
):
    (tmp_path / "a-file").write_text("")
    uri = make_uri(tmp_path)
    argv = [*TINY, "--loggers", "mlflow", "--logger.mlflow.tracking-uri", uri, "--run-name", "x"]
    assert train(*argv) == 2
    message = capsys.readouterr().err
    assert f"--logger.mlflow.tracking-uri {uri}" in message and "cannot be opened" in message
    assert "Traceback" not in message
    assert not (tmp_path / "outputs" / "x").exists()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"loggers": ("none", "tensorboard")}, "none means no tracker"),
        ({"loggers": ("mlflow", "mlflow")}, "names a logger twice"),
        ({"tags": ("",)}, "--tags ''"),
        ({"tags": ("x" * 65,)}, "1 to 64"),
        ({"tags": ("a,b",)}, "--tags 'a,b'"),
        (
            {"loggers": ("mlflow",), "logger": LoggerOptions(mlflow=MLflow(tags=("team",)))},
            "--logger.mlflow.tags team: give each tag as KEY=VALUE",
        ),
        (
            {"loggers": ("wandb",), "logger": LoggerOptions(wandb=Wandb(tags=("t" * 65,)))},
            "W&B tags have 1 to 64 characters",
        ),
    ],
)
def test_bad_logger_options_and_tags_get_a_message_naming_them(changes, expected):
    [found] = problems(TrainingConfig(**changes))
    assert expected in found


@pytest.mark.parametrize("name", LOGGERS.names())
def test_every_logger_has_no_problems_at_its_defaults_and_help_for_each_option(name):
    from tests.test_cli import _documented_fields

    cls = LOGGERS.get(name)
    assert cls().problems() == []
    assert problems(TrainingConfig(loggers=(name,))) == []
    assert {field.name for field in dataclasses.fields(cls)} <= _documented_fields(cls)
    assert cls.__doc__ and cls.__doc__.strip()


def test_the_loggers_options_are_read_from_the_command_line_and_survive_the_json_form():
    from toolbox.cli.parse import parse_training_config

    argv = ["--loggers", "mlflow", "wandb", "--logger.mlflow.tracking-uri", "sqlite:///m.db"]
    argv += ["--logger.wandb.mode", "disabled", "--logger.wandb.entity", "team"]
    argv += ["--notes", "a note", "--tags", "a", "b"]
    config = parse_training_config(argv)
    assert config.loggers == ("mlflow", "wandb") and config.tags == ("a", "b")
    assert config.logger.mlflow.tracking_uri == "sqlite:///m.db"
    assert config.logger.wandb == Wandb(mode="disabled", entity="team")
    assert from_plain(json.loads(json.dumps(to_plain(config)))) == config
    assert config.logger_configs == [config.logger.mlflow, config.logger.wandb]


# --- TensorBoard, none ---------------------------------------------------------------------------


def test_loggers_none_writes_no_event_file_but_the_runs_own_record(train, tmp_path):
    assert train(*TINY, "--loggers", "none", "--run-name", "quiet") == 0
    run_dir = tmp_path / "outputs" / "quiet"
    assert not list(run_dir.glob("events.out.tfevents.*"))
    for name in ("metrics.csv", "run.json", "training.log", "curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert len(csv_rows(run_dir)) == 2
    assert "trackers" not in json.loads((run_dir / "run.json").read_text())


# --- W&B, offline ------------------------------------------------------------------------------

BLOCK = 32 * 1024
FULL, LAST = 1, 4


def wandb_records(path: Path):
    """The records of a W&B transaction log (run-<id>.wandb), as wandb's own protobuf
    messages. The file is a 7-byte header (":W&B", a magic number, a version), then LevelDB's
    log format: 32 KiB blocks of chunks, each after a 7-byte header (crc32c, length, type);
    a record is one FULL chunk, or FIRST, MIDDLE... LAST."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        room = BLOCK - position % BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if room < 7 or kind == 0:  # the block's padding
            position += room
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(sync_dir: Path) -> tuple[object, dict, list[dict]]:
    """The run record, the config and the history rows of one offline W&B session."""
    [log] = sync_dir.glob("run-*.wandb")
    run, config, history = None, {}, []
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({i.key: json.loads(i.value_json) for i in run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    config.pop("_wandb", None)
    return run, config, history


@pytest.mark.slow  # wandb starts its wandb-core process
def test_wandb_offline_run_holds_the_config_and_the_table_and_a_resume_continues_it(
    train, tmp_path
):
    argv = [*TINY, "--epochs", "1", "--loggers", "wandb", "--logger.wandb.tags", "w"]
    argv += ["--tags", "baseline", "--notes", "offline try", "--run-name", "wb"]
    assert train(*argv) == 0
    run_dir = tmp_path / "outputs" / "wb"
    first = json.loads((run_dir / "run.json").read_text())["trackers"]["wandb"]
    sync_dir = Path(first["dir"])
    assert sync_dir.parent == run_dir / "wandb"
    log = (run_dir / "training.log").read_text()
    assert f"upload it with: wandb sync {sync_dir}" in log
    run, config, history = wandb_run(sync_dir)
    assert (run.run_id, run.display_name, run.notes) == (first["id"], "wb", "offline try")
    assert list(run.tags) == ["baseline", "w"]
    assert config == flat(json.loads((run_dir / "config.json").read_text()))
    samples, *evaluations = history
    assert samples["_step"] == 0 and samples["samples/train/_type"] == "image-file"

    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "2") == 0
    second = json.loads((run_dir / "run.json").read_text())["trackers"]["wandb"]
    assert second["id"] == first["id"] and second["dir"] != first["dir"]
    run, config, more = wandb_run(Path(second["dir"]))
    assert run.run_id == first["id"] and config["epochs"] == 2
    rows = csv_rows(run_dir)
    assert len(rows) == 2
    assert [
        {column: row[column] for column in rows[0] if column != "step"} | {"_step": row["_step"]}
        for row in evaluations + more
    ] == [
        {column: float(value) for column, value in row.items() if column != "step"}
        | {"_step": int(row["step"])}
        for row in rows
    ]
