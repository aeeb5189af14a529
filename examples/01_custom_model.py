"""A new model defined in your own script: register it, then train it with the toolbox.

Shows: a model config (a frozen dataclass whose field docstrings become --help), registered
with @register_model, trained by train.py's own entry point called in-process (script_main).

Usage (from the repository root; any train.py option may follow, later ones win):

    uv run examples/01_custom_model.py                      # 5 epochs on digits: ~1 s + imports
    uv run examples/01_custom_model.py --help               # train.py's help, with --model.*
    uv run examples/01_custom_model.py --model.depth 4 --epochs 30 --output-dir runs
    uv run examples/01_custom_model.py test outputs/<run>   # test.py on the run's test split

Registering from a script works: a registry imports the modules of its own package
(toolbox/models/*.py) on its first lookup, when the command line is parsed, and adds them to
what is already registered. So `res_mlp` is one of --arch's choices here, and only here:
train.py and test.py do not know it, so evaluate the run and resume it (`... --resume
outputs/<run>/checkpoint.pth.tar`) through this script, as the commands it prints say
(script_main names the script in them). To make it a built-in, move the class into
toolbox/models/res_mlp.py.
"""

import sys
from dataclasses import dataclass

from toolbox.cli import script_main
from toolbox.models import ModelConfig, register_model


@register_model("res_mlp")
@dataclass(frozen=True)
class ResidualMLP(ModelConfig):
    """An MLP of residual blocks, x + Linear(GELU(Linear(x))), between two linear layers."""

    width: int = 128
    """Width of the residual stream, in units."""
    depth: int = 2
    """Number of residual blocks."""
    expansion: int = 2
    """Hidden width of a block, as a multiple of --model.width."""

    def problems(self) -> list[str]:
        return self.not_positive("width", "depth", "expansion")  # checked before any build

    def build(self, info):
        # torch is imported here, not at the top, so that --help stays fast.
        import math

        from torch import nn

        from toolbox.nn import Residual

        hidden = self.width * self.expansion
        blocks = [
            Residual(
                nn.Sequential(
                    nn.Linear(self.width, hidden),
                    nn.GELU(),
                    nn.Linear(hidden, self.width),
                )
            )
            for _ in range(self.depth)
        ]
        return nn.Sequential(
            nn.Flatten(),  # (B, *input_shape) -> (B, D)
            nn.Linear(math.prod(info.input_shape), self.width),
            *blocks,
            nn.Linear(self.width, info.num_outputs),  # logits (B, classes)
        )


if __name__ == "__main__":
    sys.exit(script_main("--arch res_mlp --dataset digits --epochs 5".split()))
