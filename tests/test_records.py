"""curves.png from metrics.csv, and the TensorBoard extras, read back with TensorBoard."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import TINY
from toolbox.records import curves, tensorboard

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE_GUIDANCE = {"histograms": 0, "images": 0, "tensors": 0, "scalars": 0}


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def check_png(path: Path) -> tuple[int, int]:
    """(height, width) of a complete PNG, after checking its signature."""
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas
    return image.shape[:2]


def names(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


@pytest.fixture
def long_csv(tmp_path) -> Path:
    header = "epoch,step,lr,train_loss,val_loss,val_accuracy,val_top5,elapsed_s"
    rows = []
    for epoch in range(1, 31):
        lr = 0.05 * (1 + math.cos(math.pi * epoch / 30))
        loss = 2.3 * math.exp(-epoch / 5) + 0.01
        val = "nan" if epoch == 12 else f"{2.3 * math.exp(-epoch / 6) + 0.2:.5f}"
        accuracy = 1 - 0.9 * math.exp(-epoch / 7)
        top5 = "" if epoch == 3 else f"{1 - 0.5 * math.exp(-epoch / 3):.5f}"
        rows.append(f"{epoch},{epoch * 50},{lr},{loss},{val},{accuracy},{top5},{epoch * 2.5}")
    return write_csv(tmp_path / "metrics.csv", header, rows)


def test_curves_from_one_row(tmp_path):
    csv = write_csv(
        tmp_path / "metrics.csv",
        "epoch,step,lr,train_loss,val_loss,val_accuracy,elapsed_s",
        ["1,9,0.001,2.2,2.1,0.31,1.5"],
    )
    assert curves.write_curves(csv, tmp_path / curves.CURVES)
    assert check_png(tmp_path / curves.CURVES) == (600, 2070)  # 13.8 x 4 in at 150 dpi
    assert names(tmp_path) == {"metrics.csv", "curves.png"}  # no temporary left


def test_curves_from_many_rows_with_two_metrics_and_gaps(long_csv, tmp_path):
    png = tmp_path / "plots" / "curves.png"  # a missing folder is created
    assert curves.write_curves(long_csv, png, title="cifar10 resnet18")
    assert check_png(png) == (600, 2070)
    assert names(png.parent) == {"curves.png"}


def test_curves_without_metric_columns_nan_skips_and_all_nan_column(tmp_path):
    csv = write_csv(
        tmp_path / "metrics.csv",
        "epoch,step,lr,train_loss,val_loss,nan_skips,elapsed_s",
        ["1,10,0.1,nan,nan,0,1", "2,20,0.1,nan,nan,3,2"],
    )
    assert curves.write_curves(csv, tmp_path / "c.png")
    assert check_png(tmp_path / "c.png") == (600, 2 * 690)  # two panels: loss, lr


def test_curves_with_no_rows_yet_write_nothing(tmp_path):
    csv = write_csv(tmp_path / "metrics.csv", "epoch,step,lr,train_loss,val_loss", [])
    assert not curves.write_curves(csv, tmp_path / "c.png")
    assert names(tmp_path) == {"metrics.csv"}


def test_curves_replace_the_file_atomically(long_csv, tmp_path, monkeypatch):
    png = tmp_path / "curves.png"
    assert curves.write_curves(long_csv, png)
    first = png.read_bytes()

    from matplotlib.figure import Figure

    def fail(self, file, **kwargs):
        file.write(b"half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        curves.write_curves(long_csv, png)
    assert png.read_bytes() == first  # the reader still sees the previous picture
    assert names(tmp_path) == {"metrics.csv", "curves.png"}


def test_plotter_redraws_when_due_or_forced_and_never_raises(long_csv, tmp_path):
    import logging

    png = tmp_path / "curves.png"
    fresh = curves.CurvesPlotter(long_csv, png, min_interval_s=0)
    # The first draw imports matplotlib: it waits until that cost is a small share.
    assert not fresh.update() and not png.exists()
    fresh.cost_s = 0.0  # as if a draw had been measured cheap
    assert fresh.update()
    assert check_png(png) == (600, 2070)
    png.unlink()
    plotter = curves.CurvesPlotter(long_csv, png, min_interval_s=3600)
    assert not plotter.update() and not png.exists()  # not due yet
    assert plotter.update(force=True) and png.exists()  # the last evaluation

    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("toolbox")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # as the trainer's setup_logging sets it
    try:
        broken = curves.CurvesPlotter(tmp_path / "missing.csv", png, min_interval_s=0)
        assert not broken.update() and not broken.update(force=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(lines) == 1 and "could not draw" in lines[0] and "missing.csv" in lines[0]


@pytest.mark.parametrize(
    "metric, higher",
    [("accuracy", True), ("top5", True), ("mae", False), ("rmse", False), ("loss", False)],
)
def test_best_point_follows_the_metric_direction(metric, higher):
    # The metrics registry's higher_is_better (and the loss, which training minimises).
    assert curves.metric_directions()[metric] is higher
    assert curves.metric_directions({metric: not higher})[metric] is (not higher)
    values = [0.5, math.nan, 0.9, 0.1, 0.9]
    assert curves._best_index(values, higher) == (2 if higher else 3)
    assert curves._best_index([math.nan, math.inf], higher) is None


def test_metric_directions_come_from_the_registry_alone():
    from toolbox.metrics import METRICS

    directions = curves.metric_directions()
    assert set(directions) == {*METRICS.names(), "loss"}
    for name in METRICS.names():
        assert directions[name] is METRICS.get(name).higher_is_better
    # A name the registry does not know is not guessed at: its best point is not marked.
    assert "val_error_rate" not in directions and "mse" not in directions
    assert curves._best_index([0.5, 0.1, 0.9], None) is None


def test_curves_of_a_metric_of_unknown_direction_draw_it_without_a_best_point(tmp_path):
    csv = write_csv(
        tmp_path / "metrics.csv",
        "epoch,step,lr,train_loss,val_loss,val_error_rate,elapsed_s",
        ["1,9,0.001,2.2,2.1,0.31,1.5", "2,18,0.001,2.0,1.9,0.21,3.0"],
    )
    assert curves.write_curves(csv, tmp_path / curves.CURVES)
    assert check_png(tmp_path / curves.CURVES) == (600, 2070)


def test_plotter_skips_a_redraw_of_an_unchanged_table(long_csv, tmp_path):
    png = tmp_path / "curves.png"
    plotter = curves.CurvesPlotter(long_csv, png, min_interval_s=0)
    assert plotter.update(force=True) and plotter.finish()
    drawn = png.stat().st_mtime_ns
    assert not plotter.update(force=True)  # the same table: the picture is current
    assert png.stat().st_mtime_ns == drawn and plotter.finish()
    with open(long_csv, "a") as file:
        file.write("31,1550,0.0,0.02,0.21,0.99,0.99,77.5\n")
    assert plotter.update(force=True) and png.stat().st_mtime_ns != drawn
    png.unlink()
    assert plotter.update(force=True) and png.exists()  # a deleted picture is drawn again


def test_background_plotter_draws_in_a_child_process(long_csv, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def here(*args, **kwargs):
        raise AssertionError("drawn in the trainer's process")

    png = tmp_path / "curves.png"
    assert curves.start_drawer() and curves.start_drawer()  # started once, then running
    plotter = curves.CurvesPlotter(long_csv, png, min_interval_s=3600, background=True)
    monkeypatch.setattr(Figure, "savefig", here)
    assert not plotter.update()  # not due yet
    assert plotter.update(force=True)  # sent
    assert plotter.finish()
    assert check_png(png) == (600, 2070)
    assert names(tmp_path) == {"metrics.csv", "curves.png"}  # no temporary left
    assert not plotter.update(force=True) and plotter.finish()  # nothing new to draw


def test_plotters_draw_their_files_from_any_working_directory(long_csv, tmp_path, monkeypatch):
    assert curves.start_drawer()  # in the tests' working directory, not tmp_path
    monkeypatch.chdir(tmp_path)
    plotter = curves.CurvesPlotter("metrics.csv", "curves.png", background=True)
    here = curves.CurvesPlotter("metrics.csv", "here.png")
    monkeypatch.chdir(tmp_path.parent)
    assert plotter.update(force=True) and plotter.finish()
    assert here.update(force=True) and here.finish()
    assert check_png(tmp_path / "curves.png") == check_png(tmp_path / "here.png") == (600, 2070)


def test_only_rank_0_starts_a_drawer(monkeypatch):
    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks draw nothing
    assert not curves.start_drawer()
    monkeypatch.setenv("RANK", "0")
    assert curves.start_drawer()


def test_background_plotter_logs_a_failure_once(tmp_path):
    import logging

    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("toolbox")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        png = tmp_path / "curves.png"
        broken = curves.CurvesPlotter(tmp_path / "missing.csv", png, background=True)
        assert broken.update(force=True) and not broken.finish()
        assert broken.update(force=True) and not broken.finish()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(lines) == 1 and "could not draw" in lines[0] and "missing.csv" in lines[0]
    assert names(tmp_path) == set()


def test_background_plotter_draws_here_when_its_drawer_dies(long_csv, tmp_path):
    from toolbox.records import background

    png = tmp_path / "curves.png"
    plotter = curves.CurvesPlotter(long_csv, png, background=True)
    drawer = background.worker(curves.__name__)
    drawer.process.kill()
    drawer.process.wait()
    plotter.update(force=True)  # sent to a dead process, or found it dead
    assert plotter.finish(timeout=30)
    assert check_png(png) == (600, 2070)
    assert curves.start_drawer()  # a new one starts for the next plotter
    assert background.worker(curves.__name__) is not drawer


# --- TensorBoard ---------------------------------------------------------------------------


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance=SIZE_GUIDANCE)
    events.Reload()
    return events


@pytest.fixture
def writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "run"))
    yield writer
    writer.close()


def test_flatten_hparams_of_a_real_config_gives_only_scalars():
    from toolbox.cli.parse import parse_training_config
    from toolbox.config.plain import to_plain

    config = parse_training_config([*TINY, "--metrics", "accuracy", "top5"])
    flat = tensorboard.flatten_hparams(to_plain(config))
    assert flat["arch"] == "mlp" and flat["epochs"] == 2 and flat["batch_size"] == 32
    assert flat["optim.lr"] == config.optim.lr and flat["data.num_train"] == 320
    assert flat["metrics"] == '["accuracy", "top5"]'
    assert flat["run_name"] == "None" and flat["compile"] is False
    assert all(type(value) in (bool, int, float, str) for value in flat.values())


def test_hparams_land_in_the_writers_own_run_directory(writer, tmp_path):
    from tensorboard.plugins.hparams import metadata

    config = {
        "arch": "cnn",
        "compile": True,
        "run_name": None,
        "metrics": ["accuracy", "top5"],
        "optim": {"lr": 0.05, "betas": (0.9, 0.999), "fused": False},
        "model": {"channels": 16},
    }
    writer.add_scalar("val/loss", 0.7, 3)
    tensorboard.log_hparams(writer, config, {"val_loss": 0.7, "best_val_accuracy": 0.81}, step=3)
    writer.close()

    run_dir = tmp_path / "run"
    assert all(path.is_file() for path in run_dir.iterdir())  # no sub-directory per call
    assert len(list(run_dir.iterdir())) == 1  # and no second events file
    events = read_events(run_dir)
    assert metadata.SESSION_START_INFO_TAG in events.Tags()["tensors"]
    content = events.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content
    hparams = metadata.parse_session_start_info_plugin_data(content).hparams
    assert hparams["arch"].string_value == "cnn"
    assert hparams["compile"].bool_value is True
    assert hparams["run_name"].string_value == "None"
    assert hparams["metrics"].string_value == '["accuracy", "top5"]'
    assert hparams["optim.lr"].number_value == pytest.approx(0.05)
    assert hparams["optim.betas"].string_value == "[0.9, 0.999]"
    assert hparams["optim.fused"].bool_value is False
    assert hparams["model.channels"].number_value == 16
    end = events.SummaryMetadata(metadata.SESSION_END_INFO_TAG).plugin_data.content
    assert metadata.parse_session_end_info_plugin_data(end).status == 1  # STATUS_SUCCESS
    [point] = events.Scalars("hparam/best_val_accuracy")
    assert (point.step, point.value) == (3, pytest.approx(0.81))
    assert events.Scalars("hparam/val_loss")[0].value == pytest.approx(0.7)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # html5lib, inside tensorboard
def test_tensorboards_hparams_dashboard_lists_each_run(tmp_path):
    """What the HPARAMS tab shows for `tensorboard --logdir outputs` with two runs."""
    from tensorboard.backend import application
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from torch.utils.tensorboard import SummaryWriter
    from werkzeug import test as werkzeug_test
    from werkzeug import wrappers

    outputs = tmp_path / "outputs"
    for name, lr, accuracy in (("a", 0.1, 0.9), ("b", 0.01, 0.8)):
        with SummaryWriter(str(outputs / name)) as writer:
            writer.add_scalar("val/accuracy", accuracy, 2)
            config = {"optim": {"lr": lr}, "model": {"hidden_sizes": [32] if lr > 0.05 else [64]}}
            tensorboard.log_hparams(writer, config, {"best_val_accuracy": accuracy}, step=2)

    multiplexer = pem.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(outputs))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(outputs))
    context = base_plugin.TBContext(
        logdir=str(outputs), data_provider=provider, multiplexer=multiplexer
    )
    app = application.TensorBoardWSGI([hparams_plugin.HParamsPlugin(context)])
    client = werkzeug_test.Client(app, wrappers.Response)
    request = {
        "startIndex": 0,
        "sliceSize": 10,
        "allowedStatuses": ["STATUS_SUCCESS"],
        "colParams": [{"hparam": "optim.lr"}],
    }
    reply = client.post(
        "/data/plugin/hparams/session_groups",
        data=json.dumps(request),
        content_type="application/json",
    )
    assert reply.status_code == 200
    groups = {group["name"]: group for group in json.loads(reply.get_data())["sessionGroups"]}
    assert set(groups) == {"a", "b"}
    assert groups["b"]["hparams"] == {"optim.lr": 0.01, "model.hidden_sizes": "[64]"}
    metrics = {value["name"]["tag"]: value["value"] for value in groups["b"]["metricValues"]}
    assert metrics["hparam/best_val_accuracy"] == pytest.approx(0.8)
    assert metrics["val/accuracy"] == pytest.approx(0.8)


class Compiled(nn.Module):
    """Stands for torch.compile's wrapper: its parameters' names start with _orig_mod."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner

    def forward(self, x):
        return self._orig_mod(x)


def test_histograms_of_weights_and_gradients(writer, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), nn.LayerNorm(3))
    model[0].weight.requires_grad_(False)  # frozen: a weight histogram, no gradient
    model(torch.randn(5, 8)).square().mean().backward()
    with torch.no_grad():
        model[2].weight[0, 0] = math.nan  # non-finite values are left out
    written = tensorboard.log_histograms(writer, Compiled(model), epoch=4)
    writer.close()

    events = read_events(tmp_path / "run")
    tags = set(events.Tags()["histograms"])
    parameters = [name for name, _ in model.named_parameters()]
    gradients = [name for name, p in model.named_parameters() if p.grad is not None]
    assert tags == {f"weights/{n}" for n in parameters} | {f"grads/{n}" for n in gradients}
    assert "grads/0.weight" not in tags and "grads/0.bias" in tags
    assert written == len(tags) == 2 * len(parameters) - 1

    def histogram(tag):
        [event] = events.Histograms(tag)
        assert event.step == 4
        return event.histogram_value

    weight = model[0].weight.detach().flatten().numpy()
    value = histogram("weights/0.weight")
    assert value.num == weight.size and sum(value.bucket) == weight.size
    assert (value.min, value.max) == (pytest.approx(weight.min()), pytest.approx(weight.max()))
    assert value.sum == pytest.approx(weight.sum(), abs=1e-4)
    assert value.sum_squares == pytest.approx((weight**2).sum(), rel=1e-5)
    edges = np.linspace(weight.min(), weight.max(), 65)
    assert value.bucket_limit == pytest.approx(edges[1:], abs=1e-6)
    assert list(value.bucket) == list(np.histogram(weight, edges)[0])

    with_nan = histogram("weights/2.weight")
    assert with_nan.num == 16 * 3 - 1 and sum(with_nan.bucket) == 16 * 3 - 1
    constant = histogram("weights/3.weight")  # LayerNorm's weight: all ones
    assert (constant.min, constant.max, constant.num) == (1.0, 1.0, 3)
    grad = model[2].bias.grad.numpy()
    assert histogram("grads/2.bias").sum == pytest.approx(grad.sum(), abs=1e-6)


def decode_image(events, tag: str):
    from PIL import Image

    [event] = events.Images(tag)
    image = Image.open(io.BytesIO(event.encoded_image_string))
    assert (event.width, event.height) == image.size
    return event, np.asarray(image.convert("RGB"))


def test_sample_grid_of_small_uint8_digits(writer, tmp_path):
    images = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 2:6, 3:5] = 16  # the digits' pixels run 0..16
    assert tensorboard.log_sample_grid(writer, images, mean=(4.9,), std=(6.0,), step=2)
    writer.close()

    event, pixels = decode_image(read_events(tmp_path / "run"), "samples/train")
    assert event.step == 2
    # 10 images enlarged 4x to 32 px, 8 a row, 2 px padding: 2 rows.
    assert (event.width, event.height) == (8 * 34 + 2, 2 * 34 + 2)
    assert pixels[2 + 4 * 4, 2 + 4 * 4].tolist() == [255, 255, 255]  # a stroke (16): white
    assert pixels[2 + 1, 2 + 1].tolist() == [0, 0, 0]  # background (0): black


def test_sample_grid_of_float_colour_images_keeps_64(writer, tmp_path):
    torch.manual_seed(0)
    mean, std = (120.0, 115.0, 100.0), (60.0, 60.0, 65.0)
    stored = (torch.rand(70, 3, 5, 7) * 255).round()
    assert tensorboard.log_sample_grid(writer, stored.to(torch.uint8), mean, std, step=1)
    normalized = (stored - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert tensorboard.log_sample_grid(
        writer, normalized, mean, std, step=1, tag="samples/normalized", normalized=True
    )
    assert not tensorboard.log_sample_grid(writer, torch.randn(8, 64), (0.0,), (1.0,))
    assert not tensorboard.log_sample_grid(writer, torch.randn(8, 2, 4, 4), (0.0,), (1.0,))
    writer.close()

    events = read_events(tmp_path / "run")
    assert set(events.Tags()["images"]) == {"samples/train", "samples/normalized"}
    event, pixels = decode_image(events, "samples/train")
    # 64 of 70 kept, 8 x 8; 5 x 7 px enlarged 7x to 35 x 49.
    assert (event.width, event.height) == (8 * (49 + 2) + 2, 8 * (35 + 2) + 2)
    _, again = decode_image(events, "samples/normalized")
    assert np.abs(pixels.astype(int) - again.astype(int)).max() <= 1  # same picture


# --- metrics.csv torn or damaged, met on resume ---------------------------------------------


def epochs_and_steps(csv_path: Path) -> list[tuple[str, str]]:
    import csv

    with open(csv_path, newline="") as file:
        return [(row["epoch"], row["step"]) for row in csv.DictReader(file)]


@pytest.mark.parametrize("torn_row", ["2", "2,1"])
def test_a_resume_drops_the_row_a_killed_append_cut_short(train, tmp_path, torn_row):
    # Killed while appending epoch 2's row, before epoch 2's checkpoint: the file ends in
    # half a row, without its newline.
    assert train(*TINY, "--epochs", "1", "--run-name", "torn") == 0
    run_dir = tmp_path / "outputs" / "torn"
    with open(run_dir / "metrics.csv", "a", newline="") as file:
        file.write(torn_row)
    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "2") == 0
    assert epochs_and_steps(run_dir / "metrics.csv") == [("1", "9"), ("2", "18")]
    log = (run_dir / "training.log").read_text()
    assert f"dropped its last line {torn_row!r}, cut short by an interrupted write" in log
    assert not list(run_dir.glob("metrics.csv.*"))  # nothing of value to keep aside


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda lines: [lines[0], b"\x00\x89PNG\x1a\xff\xfe", *lines[2:]], id="garbage"
        ),
        pytest.param(lambda lines: [lines[0][10:], *lines[1:]], id="cut-header"),
    ],
)
def test_a_resume_sets_a_damaged_metrics_table_aside_and_keeps_its_readable_rows(
    train, tmp_path, damage
):
    assert train(*TINY, "--run-name", "bad") == 0
    run_dir = tmp_path / "outputs" / "bad"
    table = run_dir / "metrics.csv"
    damaged = b"\r\n".join(damage(table.read_bytes().split(b"\r\n")))
    table.write_bytes(damaged)
    assert train("--resume", str(run_dir / "checkpoint.pth.tar"), "--epochs", "3") == 0
    [aside] = run_dir.glob("metrics.csv.damaged-*")
    assert aside.read_bytes() == damaged  # the original, byte for byte: nothing is lost
    # A garbage row is dropped and the others kept; without its header no row can be read.
    readable = [("2", "18")] if damaged.startswith(b"epoch,step") else []
    assert epochs_and_steps(table) == [*readable, ("3", "27")]
    log = (run_dir / "training.log").read_text()
    assert "metrics.csv was damaged (line " in log and f"kept it as {aside.name}" in log


# --- One duration format, the sample grid without torchvision, env.json's versions ------------


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0.0s"),
        (1.26, "1.3s"),
        (59.94, "59.9s"),
        (59.96, "1m 00s"),
        (125, "2m 05s"),
        (3599.4, "59m 59s"),
        (3600, "1h 00m"),
        (7265, "2h 01m"),
        (-2, "0.0s"),
        (math.nan, "?"),
        (math.inf, "?"),
    ],
)
def test_one_duration_format_for_the_log_the_display_and_the_curves(seconds, text):
    from toolbox.records.durations import format_duration
    from toolbox.training import display

    assert format_duration(seconds) == text
    assert display.format_duration is format_duration is curves.format_duration


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (10, 1, 32, 32), (64, 3, 5, 7), (9, 3, 4, 4)])
def test_the_sample_grid_is_laid_out_as_torchvisions_make_grid(shape):
    from torchvision.utils import make_grid

    images = torch.rand(shape)
    expected = make_grid(images, nrow=8, padding=2, pad_value=1.0)
    assert torch.equal(tensorboard._grid(images, columns=8, padding=2, pad_value=1.0), expected)


def test_env_json_names_torchvisions_version_without_importing_it(monkeypatch):
    import sys

    import torchvision

    from toolbox.records import environment

    monkeypatch.delitem(sys.modules, "torchvision")
    assert environment._version("torchvision") == torchvision.__version__
    assert "torchvision" not in sys.modules
    assert environment._version("no_such_package_here") is None
