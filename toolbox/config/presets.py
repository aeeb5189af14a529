"""Presets: registered Python functions that return a whole TrainingConfig, typed and
checked like any other config. --preset NAME starts from one; flags (and --config files)
override it. A plugin adds its own with ``@register_preset("name")``."""

from __future__ import annotations

from collections.abc import Callable

from toolbox.config.training import TrainingConfig
from toolbox.errors import UserError

Preset = Callable[[], TrainingConfig]
PRESETS: dict[str, Preset] = {}


def register_preset(name: str) -> Callable[[Preset], Preset]:
    """Registers the decorated function as preset ``name``."""

    def register(preset: Preset) -> Preset:
        if name in PRESETS:
            raise ValueError(f"a preset named {name!r} is already registered")
        PRESETS[name] = preset
        return preset

    return register


def preset_config(name: str) -> TrainingConfig:
    """The config preset ``name`` returns, or a message listing the presets."""
    if name not in PRESETS:
        raise UserError(
            f"--preset {name!r} is not a preset; choose one of: {', '.join(sorted(PRESETS))}."
        )
    return PRESETS[name]()


@register_preset("mnist_cnn")
def mnist_cnn() -> TrainingConfig:
    """A LeNet-style convnet on MNIST: about 99% test accuracy in 5 epochs."""
    from toolbox.datasets.mnist import MNIST
    from toolbox.models.cnn import CNN
    from toolbox.optimizers.adam import AdamW

    return TrainingConfig(model=CNN(), data=MNIST(), optim=AdamW(lr=1e-3), epochs=5, batch_size=128)


@register_preset("cifar10_resnet18")
def cifar10_resnet18() -> TrainingConfig:
    """ResNet-18 on CIFAR-10 the usual way: SGD with momentum and Nesterov, weight decay
    5e-4, a cosine schedule over 30 epochs, crop and flip, bf16 autocast."""
    from toolbox.datasets.cifar import CIFAR10
    from toolbox.models.resnet import ResNet18
    from toolbox.optimizers.sgd import SGD

    return TrainingConfig(
        model=ResNet18(),
        data=CIFAR10(augment="crop_flip"),
        optim=SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        epochs=30,
        batch_size=128,
        precision="bf16",
    )


@register_preset("ddpm_mnist")
def ddpm_mnist() -> TrainingConfig:
    """The README's small DDPM U-Net on MNIST, sampled with 250 DDPM steps from a weight
    average (5 epochs: most samples are readable digits)."""
    from toolbox.datasets.mnist import MNIST
    from toolbox.models.ddpm import DDPMConfig
    from toolbox.optimizers.adam import AdamW

    return TrainingConfig(
        model=DDPMConfig(base_channels=24, sampler="ddpm", sample_steps=250),
        data=MNIST(),
        optim=AdamW(lr=1e-3),
        epochs=5,
        ema_decay=0.999,
    )
