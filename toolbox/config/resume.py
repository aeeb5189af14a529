"""What a resumed run may change and what it must keep, as its fields' metadata says.

A field marked ``fixed_on_resume`` (toolbox.component) keeps the saved value: the model and
data a run was trained on, the optimizer and schedule whose states it carries, and what its
records are keyed by. One marked ``free_on_resume`` may change. Unmarked fields follow their
class's ``options_on_resume``: a TrainingConfig's and an optimizer's, schedule's or loss's
options may change, a model's and a dataset's may not."""

from __future__ import annotations

import dataclasses

from toolbox.component import on_resume
from toolbox.config.plain import to_plain
from toolbox.config.training import SLOTS, TrainingConfig


def fixed_fields(config: object) -> list[str]:
    """The names of ``config``'s fields that a resumed run must keep (it is a dataclass)."""
    cls = type(config)
    return [field.name for field in dataclasses.fields(cls) if on_resume(cls, field) == "fixed"]


def resume_conflicts(saved: TrainingConfig, new: TrainingConfig) -> list[str]:
    """The options ``new`` changes that a resumed run must keep as ``saved`` had them."""
    before, after = to_plain(saved), to_plain(new)
    changed = [key for key in fixed_fields(saved) if before[key] != after[key]]
    for slot, (selector, _) in SLOTS.items():
        if selector in changed:
            continue  # another component: its options differ as a matter of course
        changed += [
            f"{slot}.{key}"
            for key in sorted(fixed_fields(getattr(saved, slot)))
            if before[slot][key] != after[slot][key]
        ]
    return changed
