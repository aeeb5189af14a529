"""Config files in and out: JSON or YAML holding a config's plain form, or any part of it.

A file is data: a run's own config.json, the output of --print-config, or keys a user wrote
({"optim": {"lr": 0.01}}). Files apply in order over a base config, each key over the last;
a file that names another component (``"arch": "cnn"``) starts that component's options from
its defaults before applying the file's own."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from toolbox.config.plain import from_plain, to_plain
from toolbox.config.training import SLOTS, TrainingConfig
from toolbox.errors import UserError
from toolbox.plugins import load_plugins

Format = Literal["json", "yaml"]
YAML_SUFFIXES = (".yaml", ".yml")
NOT_FROM_FILES = ("resume",)
"""Keys a file may hold (a resumed run's config.json does) that do not apply: a config file
starts a new run, which --resume does not."""


def _yaml():
    """PyYAML, whose safe loader reads 1e-3 as a float (YAML 1.2) rather than a string."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.VERBOSE,
        ),
        list("-+0123456789."),
    )
    return yaml, Loader


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping a JSON or YAML file holds (YAML by its .yaml/.yml suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(
            f"--config {path} cannot be read ({error.strerror or error}); give the path of a "
            "JSON or YAML config file, e.g. a run's config.json."
        ) from None
    if path.suffix.lower() in YAML_SUFFIXES:
        yaml, loader = _yaml()
        try:
            data = yaml.load(text, Loader=loader)
        except yaml.YAMLError as error:
            raise UserError(f"--config {path} is not valid YAML: {error}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(
                f"--config {path} is not valid JSON ({error.msg} at line {error.lineno}, "
                f"column {error.colno}); YAML files need the .yaml or .yml suffix."
            ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"--config {path} holds a {type(data).__name__}, not a mapping of options; write "
            'e.g. {"epochs": 5, "optim": {"lr": 0.01}}.'
        )
    return data


def overlay(plain: dict[str, Any], data: dict[str, Any], source: str) -> dict[str, Any]:
    """``plain`` (a config's plain form) with ``data``'s keys over it."""
    merged = {**plain}
    for slot, (selector, registry) in SLOTS.items():
        name = data.get(selector)
        if isinstance(name, str) and name != plain[selector] and name in registry:
            merged[slot] = to_plain(registry.get(name)())
            default_metrics = getattr(registry.get(name), "default_metrics", None)
            if slot == "model" and default_metrics is not None and "metrics" not in data:
                merged["metrics"] = list(default_metrics)
    for key, value in data.items():
        if key in SLOTS:
            if not isinstance(value, dict):
                raise UserError(
                    f"{source}: {key} is {value!r}; it must be a mapping of "
                    f"{SLOTS[key][1].kind} options, e.g. {{}}."
                )
            merged[key] = {**merged[key], **value}
        elif key not in NOT_FROM_FILES:
            merged[key] = value
    return merged


def with_config_files(base: TrainingConfig, paths: list[Path]) -> TrainingConfig:
    """``base`` with each file of ``paths`` applied over it in turn (later files win), each
    checked as it applies, so a message names the file that holds the bad key."""
    config = base
    for path in paths:
        source = f"--config {path}"
        data = read_config_file(path)
        plugins = data.get("plugins", [])
        if isinstance(plugins, list):  # from_plain refuses any other value
            load_plugins(plugins, f"{source}: plugins")  # before its components are looked up
            data["plugins"] = list(dict.fromkeys([*config.plugins, *plugins]))
        config = from_plain(overlay(to_plain(config), data, source), source)
    return config


def dump(config: TrainingConfig, fmt: Format = "json") -> str:
    """``config``'s plain form as JSON or YAML text, which --config reads back as it is."""
    plain = to_plain(config)
    if fmt == "yaml":
        yaml, _ = _yaml()
        return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
    return json.dumps(plain, indent=2) + "\n"
