"""The run's configuration, torch-free: the one frozen TrainingConfig (``training``), its checks
(``checks``), its JSON form (``plain``), what a resume may change (``resume``), and test.py's
options (``evaluate``). The names below are the public ones."""

from toolbox.config.checks import problems, validate
from toolbox.config.plain import flat, from_plain, to_plain
from toolbox.config.resume import resume_conflicts
from toolbox.config.training import DEVICE_PATTERN, SLOTS, TrainingConfig, with_components

__all__ = [
    "DEVICE_PATTERN",
    "SLOTS",
    "TrainingConfig",
    "flat",
    "from_plain",
    "problems",
    "resume_conflicts",
    "to_plain",
    "validate",
    "with_components",
]
