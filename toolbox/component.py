"""What every component config shares: a frozen dataclass that checks itself and builds."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, Literal

OnResume = Literal["fixed", "free"]
"""Whether a resumed run must keep an option as the checkpoint was trained with ("fixed") or
may change it ("free"): read by toolbox.config.resume_conflicts from the field's metadata,
else from its class's ``options_on_resume``."""
ON_RESUME = "on_resume"


def fixed_on_resume(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A dataclass field that a resumed run cannot change (what the weights, the optimizer
    state or the records depend on)."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={ON_RESUME: "fixed"}
    )


def free_on_resume(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A dataclass field that a resumed run may change (what changes no weight and no sample
    seen, such as a sampler or where the files lie)."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={ON_RESUME: "free"}
    )


def on_resume(cls: type, field: dataclasses.Field) -> OnResume:
    """Whether ``field`` of the dataclass ``cls`` may change when a run is resumed."""
    return field.metadata.get(ON_RESUME, getattr(cls, "options_on_resume", "free"))


@dataclass(frozen=True)
class Component:
    """Base of every registered config; subclasses add fields, ``problems`` and ``build``."""

    registered_name: ClassVar[str] = ""  # set by Registry.register
    option_prefix: ClassVar[str] = ""  # the command-line group, e.g. "--model."
    options_on_resume: ClassVar[OnResume] = "free"
    """Whether a resumed run may change the fields not marked with fixed_on_resume or
    free_on_resume: an optimizer's, a schedule's or a loss's options may change."""

    def problems(self) -> list[str]:
        """Every problem with this config's values, each naming the option and the fix."""
        return []

    def option(self, field_name: str) -> str:
        return self.option_prefix + field_name.replace("_", "-")

    def not_positive(self, *field_names: str) -> list[str]:
        return [
            f"{self.option(name)} is {getattr(self, name)}; it must be positive."
            for name in field_names
            if not getattr(self, name) > 0  # also catches nan
        ]

    def not_probability(self, *field_names: str) -> list[str]:
        """Problems with fields that must lie in [0, 1) (dropout, smoothing, momentum)."""
        return [
            f"{self.option(name)} is {getattr(self, name)}; it must be in [0, 1)."
            for name in field_names
            if not 0.0 <= getattr(self, name) < 1.0
        ]
