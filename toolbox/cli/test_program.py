"""test.py's arguments: its own options, and the --model.* options that may change."""

from __future__ import annotations

import dataclasses

import tyro

from toolbox.config.checks import validate
from toolbox.config.resume import fixed_fields
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
    """``config`` with the --model.* options of ``argv``; only the model's options that
    change no weight, those a resumed run may change too (free_on_resume), may change."""
    model = config.model
    options = dataclasses.make_dataclass(
        "ModelOptions", [("model", type(model), dataclasses.field(default=model))], frozen=True
    )
    chosen = tyro.cli(options, args=argv, default=options(model), prog=prog).model
    fixed_names = fixed_fields(model)
    free = [field.name for field in dataclasses.fields(model) if field.name not in fixed_names]
    fixed = [
        f"--model.{name.replace('_', '-')}"
        for name in fixed_names
        if getattr(chosen, name) != getattr(model, name)
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
