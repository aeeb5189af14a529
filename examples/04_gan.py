"""A GAN: two networks, each with its own optimizer, stepped by the model's training step.

Shows: several optimizers (manual optimization, toolbox/models/steps.py). A DCGAN-style
generator (noise -> linear -> two stride-2 transposed convolutions) plays against a
convolutional discriminator; configure_optimizers() declares one Adam (betas 0.5, 0.999)
for each, and training_step steps the discriminator on real and generated images, then
the generator, through ``optimization.backward(loss, name)`` and
``optimization.step(name)``. The trainer still owns precision, --grad-accum, --clip-grad
(per optimizer), torchrun, logging and checkpoints (both optimizers' states): a run stopped
and resumed ends with the weights of one that never stopped. metrics.csv logs
train_d_loss, train_g_loss, their val_ values, loss = d_loss + g_loss, and lr_generator,
lr_discriminator; each evaluation writes samples.png, a grid from fixed noise.

Usage (from the repository root; any train.py option may follow, later ones win):

    uv run examples/04_gan.py                                  # 5 epochs on 8x8 digits: seconds
    uv run examples/04_gan.py --dataset mnist --batch-size 128 --epochs 10  # 28x28 digits
    uv run examples/04_gan.py --model.lr 1e-4 --checkpoint-every-steps 50
    uv run examples/04_gan.py --resume outputs/<run>/checkpoint.pth.tar
    uv run examples/04_gan.py test outputs/<run>                # val-style losses, samples

--optim.* is not used (each network has the model's own Adam, --model.lr and
--model.beta1); --sched applies to both.
"""

import sys
from dataclasses import dataclass

import torch  # at the top here; in a package, modules go in a _file.py so --help stays fast
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits
from torchvision.utils import make_grid

from toolbox.cli import script_main
from toolbox.errors import UserError
from toolbox.models import ModelConfig, register_model
from toolbox.models.steps import MAIN_LOSS, NamedOptimizer, StepOutput
from toolbox.optimizers.adam import Adam


def real_or_fake_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """The mean binary cross-entropy of the discriminator's logits against one label."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return binary_cross_entropy_with_logits(logits.float(), target)


class DCGAN(nn.Module):
    # loss = d_loss + g_loss: logged and monitored (val_loss); each network trains on its own.
    loss_names = (MAIN_LOSS, "d_loss", "g_loss")

    def __init__(self, image_shape, latent_size, width, mean, std, value_range, lr, beta1):
        super().__init__()
        channels, height, width_px = image_shape
        self.latent_size, self.lr, self.beta1 = latent_size, lr, beta1
        quarter = (2 * width, height // 4, width_px // 4)  # the generator's first feature map
        self.generator = nn.Sequential(
            nn.Linear(latent_size, quarter[0] * quarter[1] * quarter[2]),
            nn.Unflatten(1, quarter),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),  # H/2
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),  # H
            nn.Tanh(),
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1),  # H/2
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),  # H/4
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(quarter[0] * quarter[1] * quarter[2], 1),
        )
        # (C or 1, 1, 1): the model sees inputs normalised by the dataset's mean and std;
        # the generator's tanh is mapped onto the pixel range in those units. Dataset
        # facts, so not saved.
        self.value_range = value_range
        mean, std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        low, high = ((value - mean) / std for value in value_range)
        for name, value in (("mean", mean), ("std", std)):
            self.register_buffer(name, value, persistent=False)
        for name, value in (("centre", (low + high) / 2), ("half_range", (high - low) / 2)):
            self.register_buffer(name, value, persistent=False)
        # The same noise at every evaluation, so that the grids compare across epochs.
        noise = torch.randn(64, latent_size, generator=torch.Generator().manual_seed(0))
        self.register_buffer("fixed_noise", noise, persistent=False)

    def configure_optimizers(self) -> dict[str, NamedOptimizer]:
        adam = Adam(lr=self.lr, beta1=self.beta1, beta2=0.999)
        return {
            "generator": NamedOptimizer(self.generator.parameters(), adam),
            "discriminator": NamedOptimizer(self.discriminator.parameters(), adam),
        }

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in the model's (normalised) units."""
        return self.centre + self.half_range * self.generator(noise)

    def discriminate(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generated images as many as ``real``, the discriminator's loss on both, and its
        logits (B, 1) for the real ones."""
        fake = self.generate(torch.randn(len(real), self.latent_size, device=real.device))
        real_logits = self.discriminator(real)
        fake_loss = real_or_fake_loss(self.discriminator(fake.detach()), False)
        return fake, real_or_fake_loss(real_logits, True) + fake_loss, real_logits

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's loss: how surely the discriminator calls its images fake."""
        return real_or_fake_loss(self.discriminator(fake), True)

    def training_step(self, batch: dict[str, torch.Tensor], optimization) -> StepOutput:
        real = batch["input"]  # (B, C, H, W), already normalised by the dataset's mean, std
        fake, d_loss, _ = self.discriminate(real)
        optimization.backward(d_loss, "discriminator")  # into the discriminator's weights only
        optimization.step("discriminator")  # a no-op until an accumulation group's last batch
        # The generator against the discriminator as it is now (after its step, if any).
        g_loss = self.g_loss(fake)
        optimization.backward(g_loss, "generator")
        optimization.step("generator")
        return StepOutput({MAIN_LOSS: d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss})

    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        fake, d_loss, real_logits = self.discriminate(batch["input"])
        g_loss = self.g_loss(fake)
        losses = {MAIN_LOSS: d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}
        # What test.py writes per image: how surely the discriminator takes it for real.
        return StepOutput(losses, {"real_score": real_logits.float().sigmoid().squeeze(1)})

    def figures(self) -> dict[str, torch.Tensor]:
        """A grid (3, H', W') in [0, 1] of the fixed noise's images, 8 per row."""
        pixels = self.generate(self.fixed_noise) * self.std + self.mean
        low, high = self.value_range
        return {"samples": make_grid(((pixels - low) / (high - low)).clamp(0, 1), nrow=8)}


@register_model("dcgan")
@dataclass(frozen=True)
class DCGANConfig(ModelConfig):
    """A DCGAN-style generator and discriminator, each trained by its own Adam."""

    own_steps = True  # its module's steps replace criterion(model(x), y); --criterion unused

    latent_size: int = 32
    """Length of the noise vector the generator draws an image from."""
    width: int = 32
    """Channels of the discriminator's first convolution (the generator's last); doubled."""
    lr: float = 2e-4
    """Learning rate of both networks' Adam (--optim.* is not used)."""
    beta1: float = 0.5
    """Adam's first-moment decay for both networks (DCGAN's 0.5 keeps them from oscillating)."""

    def problems(self) -> list[str]:
        found = self.not_positive("latent_size", "width", "lr")
        return found + self.not_probability("beta1")

    def build(self, info):
        shape = tuple(info.input_shape)
        if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
            raise UserError(
                f"--arch dcgan needs images (C, H, W) with H and W multiples of 4 (two "
                f"stride-2 layers); this dataset's inputs have shape {shape}."
            )
        value_range = info.value_range or (0.0, 1.0)
        return DCGAN(
            shape,
            self.latent_size,
            self.width,
            info.mean,
            info.std,
            value_range,
            self.lr,
            self.beta1,
        )


if __name__ == "__main__":
    defaults = "--arch dcgan --dataset digits --epochs 5 --batch-size 32 --metrics"
    sys.exit(script_main(defaults.split()))
