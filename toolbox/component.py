"""What every component config shares: a frozen dataclass that checks itself and builds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Component:
    """Base of every registered config; subclasses add fields, ``problems`` and ``build``."""

    registered_name: ClassVar[str] = ""  # set by Registry.register
    option_prefix: ClassVar[str] = ""  # the command-line group, e.g. "--model."

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
