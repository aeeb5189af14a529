"""The run's configuration, torch-free: the one frozen TrainingConfig (``training``), its checks
(``checks``), its JSON form (``plain``), config files (``files``), presets (``presets``), what
a resume may change (``resume``), and test.py's options (``evaluate``). The names below are the
public ones.

The module is callable: ``toolbox.config(arch="cnn", epochs=5)`` is ``config_from_keywords``
(``keywords``), so the Python API's one name for making a config is the package's own."""

import sys
import types

from toolbox.config.checks import problems, validate
from toolbox.config.files import dump, with_config_files
from toolbox.config.keywords import config_from_keywords
from toolbox.config.plain import flat, from_plain, to_plain
from toolbox.config.presets import PRESETS, register_preset
from toolbox.config.resume import resume_conflicts
from toolbox.config.training import DEVICE_PATTERN, SLOTS, TrainingConfig, with_components

__all__ = [
    "DEVICE_PATTERN",
    "PRESETS",
    "SLOTS",
    "TrainingConfig",
    "config_from_keywords",
    "dump",
    "flat",
    "from_plain",
    "problems",
    "register_preset",
    "resume_conflicts",
    "to_plain",
    "validate",
    "with_components",
    "with_config_files",
]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **options) -> TrainingConfig:
        return config_from_keywords(*args, **options)


sys.modules[__name__].__class__ = _CallableModule
