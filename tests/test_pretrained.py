"""--model.weights, --model.freeze and --model.pretrained-lr-scale: starting from pretrained
weights and fine-tuning them."""

from __future__ import annotations

import pytest
import torch
import torchvision

from tests.test_resume import assert_resumes_like_a_straight_run
from toolbox.records.checkpoint import load_checkpoint

# 10 classes of small colour images: resnet18 gets its small-image stem and a 10-class head.
SMALL_IMAGES = ["--dataset", "synthetic", "--data.input-shape", "3", "16", "16"]
SMALL_IMAGES += ["--data.num-train", "128", "--data.num-test", "32", "--device", "cpu"]
SMALL_IMAGES += ["--batch-size", "32", "--epochs", "1"]


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def imagenet_resnet18(tmp_path):
    """A torchvision resnet18 state_dict (ImageNet's layout: 7x7 stem, 1000 classes)."""
    torch.manual_seed(0)
    weights = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(weights, path)
    return path, weights


def test_torchvision_weights_start_resnet18_with_stem_and_head_skipped(
    train, tmp_path, imagenet_resnet18, caplog
):
    path, weights = imagenet_resnet18
    argv = ["--arch", "resnet18", *SMALL_IMAGES, "--model.weights", str(path), "--run-name", "r"]
    # No step, so the saved weights are the loaded ones: lr 0 is refused, a frozen model is not.
    assert train(*argv, "--model.freeze", "backbone", "--optim.weight-decay", "0") == 0
    log = flat((tmp_path / "outputs" / "r" / "training.log").read_text())
    assert "skipped (shape differs or absent): conv1.weight, fc.bias, fc.weight" in log
    saved = load_checkpoint(tmp_path / "outputs" / "r" / "checkpoint.pth.tar")["model"]
    loaded = [key for key in saved if key not in ("conv1.weight", "fc.weight", "fc.bias")]
    assert len(loaded) == len(weights) - 3
    for key in loaded:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(saved[key], weights[key]), key  # frozen: as loaded
    assert saved["fc.weight"].shape == (10, 512)


def test_freeze_backbone_trains_only_the_head(train, tmp_path):
    assert train("--dataset", "digits", "--epochs", "1", "--device", "cpu", "--run-name", "a") == 0
    source = tmp_path / "outputs" / "a" / "checkpoint.pth.tar"
    argv = ["--dataset", "digits", "--epochs", "2", "--device", "cpu", "--run-name", "b"]
    assert train(*argv, "--model.weights", str(source), "--model.freeze", "backbone") == 0
    before = load_checkpoint(source)["model"]
    after = load_checkpoint(tmp_path / "outputs" / "b" / "checkpoint.pth.tar")["model"]
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == set(list(before)[-2:])  # the last Linear's weight and bias


def test_pretrained_layers_get_their_fraction_of_the_learning_rate(train, tmp_path):
    assert train("--dataset", "digits", "--epochs", "1", "--device", "cpu", "--run-name", "a") == 0
    source = tmp_path / "outputs" / "a" / "checkpoint.pth.tar"
    argv = ["--dataset", "digits", "--epochs", "1", "--device", "cpu", "--run-name", "b"]
    argv += ["--model.weights", str(source), "--model.pretrained-lr-scale", "0.1"]
    argv += ["--scheduler", "none", "--optim.lr", "0.002"]
    assert train(*argv) == 0
    state = load_checkpoint(tmp_path / "outputs" / "b" / "checkpoint.pth.tar")
    rates = sorted({round(group["lr"], 9) for group in state["optimizer"]["param_groups"]})
    assert rates == [0.0002]  # every tensor of the same mlp was loaded: all at 0.1x
    assert len(state["pretrained_keys"]) == len(state["model"])


def test_a_fine_tuned_run_resumes_exactly(train, tmp_path, monkeypatch, signal_at_step):
    """The resume rebuilds the same optimizer groups from the checkpoint's loaded keys."""
    assert train("--dataset", "digits", "--epochs", "1", "--device", "cpu", "--run-name", "a") == 0
    source = tmp_path / "outputs" / "a" / "checkpoint.pth.tar"
    argv = ["--dataset", "digits", "--epochs", "2", "--device", "cpu", "--arch", "mlp"]
    argv += ["--model.hidden-sizes", "256", "32", "--model.weights", str(source)]
    argv += ["--model.pretrained-lr-scale", "0.1", "--batch-size", "32"]
    # A second hidden layer the source lacks: its first layer loads, the rest is new.
    outputs = tmp_path / "outputs"
    assert_resumes_like_a_straight_run(train, outputs, argv, 50, signal_at_step, monkeypatch)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--model.weights", "IMAGENET1K_V1"], "has no named weights"),
        (["--model.weights", "nowhere/weights.pt"], "does not exist"),
        (["--model.pretrained-lr-scale", "0.1"], "--model.weights, which is not given"),
        (["--model.pretrained-lr-scale", "0", "--model.weights", "x.pt"], "positive fraction"),
    ],
)
def test_bad_weight_options_exit_2(train, capsys, argv, named):
    assert train("--dataset", "digits", "--device", "cpu", *argv) == 2
    err = flat(capsys.readouterr().err)
    assert named in err and "Traceback" not in err


def test_weights_of_another_architecture_exit_2(train, tmp_path, imagenet_resnet18, capsys):
    path, _ = imagenet_resnet18
    assert train("--arch", "cnn", *SMALL_IMAGES, "--model.weights", str(path)) == 2
    err = flat(capsys.readouterr().err)
    assert "another architecture" in err and "--init-from" in err
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_named_torchvision_weights_offline_say_where_to_put_the_file(
    train, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    assert train("--arch", "resnet18", *SMALL_IMAGES, "--model.weights", "DEFAULT") == 2
    err = flat(capsys.readouterr().err)
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err


def test_named_torchvision_weights_from_the_cache(train, tmp_path, monkeypatch):
    """Offline, a file already in torchvision's cache is what DEFAULT loads."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(1)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, cache / "resnet18-f37072fd.pth")
    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.DEFAULT.value,
        "url",
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    )
    argv = ["--arch", "resnet18", *SMALL_IMAGES, "--model.freeze", "backbone", "--run-name", "c"]
    assert train(*argv, "--model.weights", "DEFAULT") == 0
    saved = load_checkpoint(tmp_path / "outputs" / "c" / "checkpoint.pth.tar")["model"]
    assert torch.equal(saved["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"])
