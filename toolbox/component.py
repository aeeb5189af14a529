"""What every component config shares: a frozen dataclass that checks itself and builds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    """Base of every registered config; subclasses add fields, ``problems`` and ``build``."""

    registered_name = ""  # set by Registry.register

    def problems(self) -> list[str]:
        """Every problem with this config's values, each naming the field and the fix."""
        return []
