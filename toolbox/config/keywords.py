"""A TrainingConfig from Python keywords, built like train.py builds one from flags:
``toolbox.config(arch="cnn", dataset="mnist", epochs=5, **{"optim.lr": 1e-3})``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from toolbox.config.checks import validate
from toolbox.config.files import overlay, with_config_files
from toolbox.config.plain import from_plain, to_plain
from toolbox.config.presets import preset_config
from toolbox.config.training import SLOTS, TrainingConfig
from toolbox.errors import UserError
from toolbox.plugins import load_plugins, plugin_name

SOURCE = "toolbox.config"


def config_from_keywords(
    preset: str | None = None,
    config: str | list[str] | tuple[str, ...] = (),
    **options: Any,
) -> TrainingConfig:
    """The validated config: ``preset``'s (or the defaults), then the ``config`` files, then
    ``options``. An option is a field (``epochs=5``), a selector (``arch="cnn"``: that
    component at its defaults), a dotted key into a component (``"optim.lr": 1e-3``), a
    component's options as a dict (``optim={"lr": 1e-3}``) or a component itself
    (``model=CNN(hidden_size=64)``, which sets its selector). ``plugins=[...]`` are imported
    first, so their components can be named."""
    plugins = [plugin_name(p) for p in options.pop("plugins", ())]
    load_plugins(plugins, f"{SOURCE}(plugins=...)")
    base = TrainingConfig() if preset is None else preset_config(preset)
    files = [config] if isinstance(config, str) else list(config)
    base = with_config_files(base, [Path(file) for file in files])
    given = _nested(options)
    if plugins:
        given["plugins"] = list(dict.fromkeys([*base.plugins, *plugins]))
    result = from_plain(overlay(to_plain(base), given, SOURCE), SOURCE)
    validate(result)
    return result


def _nested(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` in the plain form from_plain reads: dotted keys grouped by their slot,
    components as their selector and their options, other values made plain."""
    nested: dict[str, Any] = {}
    for key, value in options.items():
        slot, dot, field = key.partition(".")
        if dot:
            if slot not in SLOTS:
                raise UserError(
                    f"{SOURCE}: {key!r} is not an option; dotted keys start with a component "
                    f"slot ({', '.join(SLOTS)}), e.g. 'optim.lr'."
                )
            group = nested.setdefault(slot, {})
            if not isinstance(group, dict):
                raise UserError(f"{SOURCE}: {key!r} and {slot}= both set {slot}; give one.")
            group[field] = to_plain(value)
        elif key in SLOTS and dataclasses.is_dataclass(value):
            selector = SLOTS[key][0]
            name = vars(type(value)).get("registered_name")
            if name is None:
                raise UserError(
                    f"{SOURCE}: {key} is a {type(value).__name__}, which is not a registered "
                    f"{SLOTS[key][1].kind}; register its class, or give {selector}= alone."
                )
            if options.get(selector, name) != name:
                raise UserError(
                    f"{SOURCE}: {selector} is {options[selector]!r} but {key} is a "
                    f"{type(value).__name__} ({name}); give one of them, or both naming the same."
                )
            nested[selector] = name
            nested.setdefault(key, {}).update(to_plain(value))
        elif key in SLOTS and isinstance(value, dict):
            nested.setdefault(key, {}).update({k: to_plain(v) for k, v in value.items()})
        else:
            nested[key] = to_plain(value)
    return nested
