"""``--search-space KEY=KIND:...``: the entries of an Optuna search (see search.py), read and
checked before anything starts. Torch-free and Optuna-free: a trial is only duck-typed."""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolbox.cli.sweep import UNSWEEPABLE, _field_types
from toolbox.errors import UserError

KINDS = {"log": "log:LOW:HIGH", "float": "float:LOW:HIGH", "int": "int:LOW:HIGH", "cat": "cat:A,B"}
EXAMPLE = '--search-space "optim.lr=log:1e-4:1e-1" "optimizer=cat:sgd,adamw"'


@dataclass(frozen=True)
class Dimension:
    """One --search-space entry, ``KEY=KIND:...``: ``log:LOW:HIGH`` (log-uniform),
    ``float:LOW:HIGH``, ``int:LOW:HIGH`` (both ends included) or ``cat:A,B,...``."""

    key: str
    kind: str
    spec: str
    bounds: tuple[float, float] = (0.0, 0.0)
    choices: tuple[str, ...] = ()

    def suggest(self, trial) -> str:
        """The trial's value, as the text train.py's option takes."""
        if self.kind == "cat":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return str(trial.suggest_int(self.key, *self.bounds))
        return repr(trial.suggest_float(self.key, *self.bounds, log=self.kind == "log"))

    def extremes(self) -> list[str]:
        """The values that tell, before the first trial, whether train.py takes the range."""
        if self.kind == "cat":
            return list(self.choices)
        return [str(end) if self.kind == "int" else repr(float(end)) for end in self.bounds]

    def grid(self) -> list:
        if self.kind == "cat":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.bounds[0]), int(self.bounds[1]) + 1))
        raise UserError(
            f"--search-space {self.spec}: --search-sampler grid tries every value, so it "
            "takes int: and cat: entries only; list the values with cat:, or use tpe or random."
        )


def read_space(specs: list[str], given: set[str]) -> tuple[list[Dimension], set[str]]:
    """The --search-space entries and which keys are flags; the first mistake is an error."""
    space: list[Dimension] = []
    flags: set[str] = set()
    for spec in specs:
        key, eq, rest = spec.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        kind, colon, values = rest.partition(":")
        where = f"--search-space {spec}"
        if not eq or not key or kind not in KINDS or not colon:
            raise UserError(
                f"{where}: write KEY=KIND:..., KIND being one of {', '.join(KINDS.values())} "
                f"({EXAMPLE})."
            )
        types = _field_types(key)
        if key in UNSWEEPABLE or not types:
            raise UserError(
                f"{where}: {key} is not an option that can be searched; keys are the options of "
                f"python train.py --help without the dashes ({EXAMPLE})."
            )
        if key in {dimension.key for dimension in space} or key in given:
            twice = "searched twice" if key not in given else "also given as an option"
            raise UserError(f"{where}: --{key} is {twice}; keep one.")
        if kind == "cat":
            choices = tuple(value.strip() for value in values.split(","))
            if not all(choices) or len(set(choices)) < len(choices):
                raise UserError(f"{where}: list distinct values, cat:A,B,...")
            if bool in types:
                flags.add(key)
                if any(choice.lower() not in ("true", "false") for choice in choices):
                    raise UserError(f"{where}: --{key} is a flag; search it with cat:true,false.")
            space.append(Dimension(key, kind, spec, choices=choices))
            continue
        if bool in types:
            raise UserError(f"{where}: --{key} is a flag; search it with cat:true,false.")
        ends = values.split(":")
        try:
            low, high = (int(end) if kind == "int" else float(end) for end in ends)
        except ValueError:
            raise UserError(f"{where}: write {KINDS[kind]}, two numbers ({EXAMPLE}).") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high) or (
            kind == "log" and low <= 0
        ):
            above = " and LOW above 0 (a log scale)" if kind == "log" else ""
            raise UserError(f"{where}: {KINDS[kind]} needs LOW below HIGH{above}.")
        space.append(Dimension(key, kind, spec, bounds=(low, high)))
    return space, flags
