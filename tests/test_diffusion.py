"""The ddpm model: U-Net shapes, the schedules and q(x_t | x_0) against their formulas, both
samplers against an exact denoiser, the custom-step contract, and the config's messages."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from toolbox.datasets import DatasetInfo
from toolbox.errors import UserError
from toolbox.models.ddpm import DDPMConfig
from toolbox.models.ddpm.network import GaussianDiffusion, UNet, beta_schedule
from toolbox.models.steps import StepOutput, has_own_steps

MNIST_MEAN, MNIST_STD = 0.1307 * 255, 0.3081 * 255
TINY = DDPMConfig(base_channels=8, timesteps=20, sample_steps=5, num_samples=4)


def tiny_model(shape=(1, 8, 8), **changes):
    config = dataclasses.replace(TINY, **changes)
    info = DatasetInfo(
        "classification",
        shape,
        10,
        mean=(MNIST_MEAN,),
        std=(MNIST_STD,),
        value_range=(0.0, 255.0),
    )
    torch.manual_seed(0)
    return config.build(info)


class GaussianOracle:
    """The exact noise predictor E[noise | x_t] for data whose values are i.i.d. N(mean, std^2).

    With x_t = sqrt(a) x_0 + sqrt(1 - a) noise, E[noise | x_t] is
    sqrt(1 - a) (x_t - sqrt(a) mean) / (a std^2 + 1 - a); std = 0 is a single constant image.
    """

    def __init__(self, diffusion: GaussianDiffusion, mean: float, std: float) -> None:
        self.alphas_cumprod = diffusion.alphas_cumprod
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mean) / (a * self.std**2 + 1 - a)


# --- The U-Net and the schedule ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 7, 9)])
def test_unet_predicts_noise_of_the_input_shape(shape):
    unet = UNet(shape[0], base_channels=8)
    output = unet(torch.randn(2, *shape), torch.tensor([0, 999]))
    assert output.shape == (2, *shape)


def test_unet_keeps_the_keys_of_earlier_ddpm_checkpoints():
    unet = UNet(1, base_channels=8, channel_multipliers=(1, 2))
    block = ["norm1", "conv1", "time", "norm2", "conv2"]
    layers = [
        "time_mlp.0",  # linear, SiLU, linear: toolbox.nn.MLP is an nn.Sequential of them
        "time_mlp.2",
        "input",
        *[f"down_blocks.0.{name}" for name in block],
        "downsamples.0",
        *[f"middle_in.{name}" for name in [*block, "skip"]],
        "attention.norm",
        "attention.qkv",
        "attention.proj",
        *[f"middle_out.{name}" for name in block],
        "upsamples.0.conv",
        *[f"up_blocks.0.{name}" for name in [*block, "skip"]],
        "output.0",
        "output.2",
    ]
    state = unet.state_dict()
    assert list(state) == [f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")]
    assert state["time_mlp.0.weight"].shape == (32, 8)  # 4 * base_channels, base_channels
    assert state["time_mlp.2.weight"].shape == (32, 32)
    assert state["attention.qkv.weight"].shape == (48, 16, 1, 1)  # a 1x1 conv, not a Linear


def test_unet_reads_the_sinusoidal_features_of_its_timesteps_sines_first():
    unet = UNet(1, base_channels=8)
    features = []
    unet.time_mlp.register_forward_pre_hook(lambda module, inputs: features.append(inputs[0]))
    timesteps = torch.tensor([0, 1, 500, 999])
    unet(torch.randn(4, 1, 8, 8), timesteps)
    # [sin(t w_i)..., cos(t w_i)...] with w_i = 10000**(-i / 4), as DDPM embeds timesteps;
    # float32 angles of t up to 999 are good to about 1e-4.
    frequencies = 10000.0 ** -(torch.arange(4, dtype=torch.float64) / 4)
    angles = timesteps.double()[:, None] * frequencies
    expected = torch.cat([angles.sin(), angles.cos()], dim=1).float()
    torch.testing.assert_close(features[0], expected, atol=1e-4, rtol=0)


def test_linear_schedule_matches_ho_et_al_and_scales_with_t():
    betas = beta_schedule("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert betas[500].item() == pytest.approx(1e-4 + 500 * (0.02 - 1e-4) / 999)
    # Half the steps, twice the betas: the same amount of noise by the end.
    assert beta_schedule("linear", 500)[[0, -1]].tolist() == pytest.approx([2e-4, 0.04])


def test_cosine_schedule_matches_nichol_and_dhariwal():
    def f(t, steps=1000):
        return math.cos((t / steps + 0.008) / 1.008 * math.pi / 2) ** 2

    diffusion = GaussianDiffusion(1000, "cosine")
    for t in (0, 250, 998):
        assert diffusion.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-4)
    assert diffusion.betas[0].item() == pytest.approx(1 - f(1) / f(0), rel=1e-4)
    assert diffusion.betas[-1].item() == pytest.approx(0.999)  # capped, as f(T) = 0


def test_q_sample_matches_the_closed_form():
    diffusion = GaussianDiffusion(1000, "linear")
    x0, noise, t = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([0, 10, 999])
    alpha_bar = torch.cumprod(1 - beta_schedule("linear", 1000), dim=0)[t].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected.float())


def test_respaced_timesteps_run_evenly_from_the_last_to_the_first():
    diffusion = GaussianDiffusion(1000)
    assert diffusion.respaced_timesteps(1000).tolist() == list(range(999, -1, -1))
    assert diffusion.respaced_timesteps(4).tolist() == [999, 666, 333, 0]
    assert diffusion.respaced_timesteps(1).tolist() == [999]
    with pytest.raises(ValueError, match="1..1000"):
        diffusion.respaced_timesteps(1001)


# --- The samplers, against an exact denoiser -------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("steps", [50, 7])
def test_samplers_recover_a_constant_image_from_its_exact_denoiser(schedule, sampler, steps):
    diffusion = GaussianDiffusion(50, schedule)
    oracle = GaussianOracle(diffusion, mean=0.7, std=0.0)
    shape = (4, 1, 3, 3)
    if sampler == "ddpm":
        images = diffusion.ddpm_sample(oracle, shape, steps)
    else:
        images = diffusion.ddim_sample(oracle, shape, steps, eta=0.5)
    torch.testing.assert_close(images, torch.full(shape, 0.7), atol=1e-4, rtol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_draw_the_data_distribution_from_its_exact_denoiser(sampler, schedule):
    # Values i.i.d. N(0.5, 0.3^2): with all T steps the samples have that mean and standard
    # deviation (fewer steps shrink the spread: ddpm's beta~ and ddim's big steps both do).
    diffusion = GaussianDiffusion(1000, schedule)
    oracle = GaussianOracle(diffusion, mean=0.5, std=0.3)
    generator = torch.Generator().manual_seed(0)
    shape = (500, 1, 4, 4)  # 8,000 values: the standard error of their std is 0.0024
    if sampler == "ddpm":
        images = diffusion.ddpm_sample(oracle, shape, 1000, generator=generator)
    else:
        images = diffusion.ddim_sample(oracle, shape, 1000, generator=generator)
    assert images.mean().item() == pytest.approx(0.5, abs=0.01)
    assert images.std().item() == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("steps", [30, 8])
def test_ddim_with_eta_one_is_ddpm(steps):
    diffusion = GaussianDiffusion(30, "cosine")
    oracle = GaussianOracle(diffusion, mean=0.5, std=0.3)
    shape, clip_range = (8, 1, 4, 4), (-0.2, 1.0)
    ddpm = diffusion.ddpm_sample(oracle, shape, steps, clip_range, torch.Generator().manual_seed(3))
    ddim = diffusion.ddim_sample(
        oracle, shape, steps, 1.0, clip_range, torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=1e-5)


def test_ddim_with_eta_zero_is_deterministic_given_the_starting_noise():
    diffusion = GaussianDiffusion(30)
    unet = UNet(1, base_channels=8).eval()

    def draw(seed):
        return diffusion.ddim_sample(
            unet, (2, 1, 8, 8), 5, generator=torch.Generator().manual_seed(seed)
        )

    torch.manual_seed(1)  # the global RNG plays no part
    first = draw(0)
    torch.manual_seed(2)
    torch.testing.assert_close(draw(0), first, atol=0, rtol=0)
    assert not torch.equal(draw(1), first)


def test_samples_are_clipped_to_the_data_range():
    diffusion = GaussianDiffusion(20)
    oracle = GaussianOracle(diffusion, mean=0.0, std=3.0)  # data far wider than the range
    for images in (
        diffusion.ddpm_sample(oracle, (16, 1, 4, 4), 20, (-1.0, 1.0)),
        diffusion.ddim_sample(oracle, (16, 1, 4, 4), 20, clip_range=(-1.0, 1.0)),
    ):
        assert -1.0 - 1e-5 <= images.min() and images.max() <= 1.0 + 1e-5
        assert images.abs().max() > 0.9


# --- The module and its steps ----------------------------------------------------------------


def test_training_step_is_finite_and_reaches_every_parameter():
    model = tiny_model((1, 28, 28))
    assert has_own_steps(model)
    output = model.training_step({"input": torch.randn(4, 1, 28, 28)})
    assert isinstance(output, StepOutput) and output.losses["loss"].shape == ()
    assert torch.isfinite(output.losses["loss"])
    output.losses["loss"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_forward_is_the_noise_prediction_of_the_unet():
    model = tiny_model()
    noisy, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 5, 19])
    torch.testing.assert_close(model(noisy, t), model.unet(noisy, t))


def test_evaluation_step_is_deterministic_given_the_global_rng():
    model = tiny_model().eval()
    batch = {"input": torch.randn(6, 1, 8, 8), "target": torch.zeros(6, dtype=torch.long)}
    with torch.no_grad():
        torch.manual_seed(5)
        first = model.evaluation_step(batch)
        torch.manual_seed(5)
        second = model.evaluation_step(batch)
    assert first.losses["loss"].item() == second.losses["loss"].item()
    assert first.outputs["loss"].shape == (6,) and first.outputs["timestep"].shape == (6,)
    assert first.losses["loss"].item() == pytest.approx(first.outputs["loss"].mean().item())


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_figures_are_a_fixed_grid_in_the_unit_range_that_leave_the_rng_alone(sampler):
    model = tiny_model(sampler=sampler).eval()
    state = torch.get_rng_state()
    grid = model.figures()["samples"]
    assert torch.equal(torch.get_rng_state(), state)
    # make_grid repeats one channel as RGB; 4 samples of 8x8 in one row, 2 px apart.
    assert grid.shape == (3, 12, 42) and grid.dtype == torch.float32
    assert 0.0 <= grid.min() and grid.max() <= 1.0
    torch.manual_seed(123)
    assert torch.equal(model.figures()["samples"], grid)


def test_samples_map_the_pixel_range_to_the_unit_range():
    model = tiny_model(pixel_range=(0.0, 16.0))
    low, high = model.clip_range()
    pixels = model.to_unit_range(torch.cat([low, high]).view(2, 1, 1, 1))
    assert pixels.flatten().tolist() == pytest.approx([0.0, 1.0])


def test_pixel_range_defaults_to_the_datasets_and_is_asked_for_where_it_has_none():
    assert tiny_model().pixel_range == (0.0, 255.0)
    assert tiny_model(pixel_range=(0.0, 16.0)).pixel_range == (0.0, 16.0)
    unbounded = DatasetInfo("regression", (1, 8, 8), 1)
    with pytest.raises(UserError, match=r"--model.pixel-range LOW HIGH"):
        TINY.build(unbounded)
    assert DDPMConfig(pixel_range=(-1.0, 1.0)).build(unbounded).pixel_range == (-1.0, 1.0)


def test_checkpoint_holds_only_the_network():
    # The schedule and the dataset's statistics come from the config, not the checkpoint.
    model = tiny_model()
    assert all(key.startswith("unet.") for key in model.state_dict())
    tiny_model(beta_schedule="cosine").load_state_dict(model.state_dict())


# --- The config ------------------------------------------------------------------------------


@pytest.mark.slow
def test_config_module_does_not_import_torch():
    code = "import sys, toolbox.models.ddpm; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_default_config_has_no_problems():
    assert DDPMConfig().problems() == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"base_channels": 30}, ["--model.base-channels is 30", "multiple of 8"]),
        ({"base_channels": 0}, ["--model.base-channels is 0", "positive"]),
        ({"sample_steps": 2000}, ["--model.sample-steps is 2000", "1..1000"]),
        ({"sample_steps": 0}, ["--model.sample-steps is 0", "positive"]),
        ({"timesteps": -5}, ["--model.timesteps is -5", "positive"]),
        ({"num_samples": 0}, ["--model.num-samples is 0", "positive"]),
        ({"ddim_eta": 1.5}, ["--model.ddim-eta is 1.5", "[0, 1]"]),
        ({"ddim_eta": 0.5, "sampler": "ddpm"}, ["--model.ddim-eta is 0.5", "ignores it"]),
        ({"pixel_range": (255.0, 0.0)}, ["--model.pixel-range is [255.0, 0.0]", "0 255"]),
    ],
)
def test_config_problems_name_the_option_the_value_and_the_fix(changes, expected):
    found = DDPMConfig(**changes).problems()
    assert len(found) == 1, found
    for fragment in expected:
        assert fragment in found[0]
