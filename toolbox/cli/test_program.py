"""test.py's arguments: its own options, and the --model.* options that may change."""

from __future__ import annotations

import dataclasses

import tyro

from toolbox.config.checks import validate
from toolbox.errors import UserError


def split_model_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without its --model.* options and their values, and those (test.py's own
    options are parsed before the run's model is known)."""
    rest, model_options = [], []
    target = rest
    for arg in argv:
        if arg.startswith("--"):
            target = model_options if arg.startswith("--model.") else rest
        target.append(arg)
    return rest, model_options


def with_model_options(config, argv: list[str], prog: str):
    """``config`` with the --model.* options of ``argv``; only the model's weightless
    options (ModelConfig.weightless_options) may change."""
    model = config.model
    options = dataclasses.make_dataclass(
        "ModelOptions", [("model", type(model), dataclasses.field(default=model))], frozen=True
    )
    chosen = tyro.cli(options, args=argv, default=options(model), prog=prog).model
    free = type(model).weightless_options
    fixed = [
        f"--model.{field.name.replace('_', '-')}"
        for field in dataclasses.fields(model)
        if field.name not in free and getattr(chosen, field.name) != getattr(model, field.name)
    ]
    if fixed:
        allowed = " ".join(f"--model.{name.replace('_', '-')}" for name in free) or "none"
        raise UserError(
            f"{', '.join(fixed)}: test.py cannot change the run's model, whose weights were "
            f"trained with the saved value; of --arch {config.arch}'s options it may change "
            f"only those that change no weight ({allowed})."
        )
    changed = dataclasses.replace(config, model=chosen)
    validate(changed)
    return changed
