"""A model with its own training and evaluation steps and several named losses.

Shows: the contract of toolbox/steps.py. An autoencoder-classifier encodes each digit to a
small code, classifies the code and decodes the image from it. It trains on
loss = ce + beta * recon and logs all three (train_ce, val_recon... in metrics.csv, on the
console, in TensorBoard); --metrics accuracy scores its outputs["prediction"]. The trainer
still owns backward, the optimizer, scheduler, precision, clipping and checkpoints.

Usage (from the repository root; any train.py option may follow, later ones win):

    uv run examples/03_custom_training_step.py                  # 5 epochs: ~1 s + imports
    uv run examples/03_custom_training_step.py --model.beta 0   # the classifier alone
    uv run examples/03_custom_training_step.py test outputs/<run>   # writes recon_error too
"""

import math
import sys
from dataclasses import dataclass

import torch  # at the top here; in a package, modules go in a _file.py so --help stays fast
from torch import nn

from toolbox.cli import script_main
from toolbox.models import ModelConfig, register_model
from toolbox.models.steps import MAIN_LOSS, StepOutput


class AutoencoderClassifier(nn.Module):
    loss_names = (MAIN_LOSS, "ce", "recon")  # both steps return these, the trained one first

    def __init__(self, width: int, hidden: int, code: int, classes: int, beta: float):
        super().__init__()
        self.beta = beta
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, code)
        )
        self.classifier = nn.Linear(code, classes)
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def evaluation_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        inputs = batch["input"]  # (B, 1, 8, 8), already normalised by the dataset's mean, std
        code = self.encoder(inputs)  # (B, code)
        logits = self.classifier(code)  # (B, classes)
        recon_error = (self.decoder(code) - inputs.flatten(1)).pow(2).mean(dim=1)  # (B,)
        ce = nn.functional.cross_entropy(logits, batch["target"])
        recon = recon_error.mean()  # every loss is a mean over the batch's samples
        losses = {MAIN_LOSS: ce + self.beta * recon, "ce": ce, "recon": recon}
        # Per-sample outputs: "prediction" is scored by --metrics; test.py writes them all.
        return StepOutput(losses, {"prediction": logits, "recon_error": recon_error})

    def training_step(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        # The same losses (model.train() has switched modes); the trainer ignores outputs here.
        return self.evaluation_step(batch)


@register_model("ae_classifier")
@dataclass(frozen=True)
class AEClassifierConfig(ModelConfig):
    """An MLP autoencoder whose code also feeds a linear classifier; loss = ce + beta * recon."""

    own_steps = True  # its module's steps replace criterion(model(x), y); --criterion unused

    hidden_size: int = 128
    """Width of the encoder's and the decoder's hidden layer, in units."""
    code_size: int = 16
    """Width of the code that is both classified and decoded, in units."""
    beta: float = 1.0
    """Weight of the reconstruction loss (mean squared error per normalised pixel), >= 0."""

    def problems(self) -> list[str]:
        found = self.not_positive("hidden_size", "code_size")
        return found + ([] if self.beta >= 0 else [f"--model.beta is {self.beta}; give >= 0."])

    def build(self, info):
        width = math.prod(info.input_shape)
        return AutoencoderClassifier(
            width, self.hidden_size, self.code_size, info.num_outputs, self.beta
        )


if __name__ == "__main__":
    defaults = "--arch ae_classifier --dataset digits --epochs 5 --optim.lr 3e-3"
    sys.exit(script_main(defaults.split()))
