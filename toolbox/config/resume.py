"""What a resumed run may change and what it must keep."""

from __future__ import annotations

from toolbox.config.plain import to_plain
from toolbox.config.training import SLOTS, TrainingConfig

# What a resumed run cannot change: the model and data it was trained on, the optimizer and
# schedule whose states it carries, and what its records are keyed by.
FIXED_ON_RESUME = (
    "arch",
    "dataset",
    "optimizer",
    "scheduler",
    "criterion",
    "metrics",
    "monitor",
    "seed",
    "ema_decay",
    "output_dir",
    "run_name",
)


# Data options that may change on resume because they do not change which samples are seen.
DATA_OPTIONS_FREE_ON_RESUME = ("root", "download", "loader", "placement", "cache")


def resume_conflicts(saved: TrainingConfig, new: TrainingConfig) -> list[str]:
    """The options ``new`` changes that a resumed run must keep as ``saved`` had them."""
    before, after = to_plain(saved), to_plain(new)
    changed = [key for key in FIXED_ON_RESUME if before[key] != after[key]]
    free_model_options = type(saved.model).weightless_options
    for slot, free in (("model", free_model_options), ("data", DATA_OPTIONS_FREE_ON_RESUME)):
        if SLOTS[slot][0] in changed:
            continue  # another arch or dataset: its options differ as a matter of course
        for key in sorted(set(before[slot]) | set(after[slot])):
            if key not in free and before[slot].get(key) != after[slot].get(key):
                changed.append(f"{slot}.{key}")
    return changed
