"""train.py's arguments to a TrainingConfig: two stages (see DESIGN.md), then the checks."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import tyro

from toolbox.cli import default_checks
from toolbox.config.checks import validate
from toolbox.config.files import dump, with_config_files
from toolbox.config.plain import from_plain
from toolbox.config.presets import PRESETS, preset_config
from toolbox.config.resume import resume_conflicts
from toolbox.config.training import SLOTS, TrainingConfig, with_components
from toolbox.errors import ArgumentParser, UserError
from toolbox.launch import launched_rank
from toolbox.plugins import load_plugins, plugin_name


def parse_training_config(argv: Sequence[str], prog: str = "train.py") -> TrainingConfig:
    """Two stages (see DESIGN.md): the selectors pick the component classes of the default
    config (or of the resumed run's config), then tyro parses every option against it."""
    argv = list(argv)
    # Stage one reads only the selectors and --resume / --init-from.
    selectors = ArgumentParser(prog=prog)
    for selector, _ in SLOTS.values():
        selectors.add_argument(f"--{selector}")
    selectors.add_argument("--resume", type=Path)
    selectors.add_argument("--init-from", type=Path)
    selectors.add_argument("--output-dir", type=Path, default=TrainingConfig.output_dir)
    selectors.add_argument("--run-name", default=TrainingConfig.run_name)
    for option, settings in STARTING_POINTS.items():
        selectors.add_argument(option, **settings)
    chosen, _ = selectors.parse_known_args(argv)
    for option, settings in STARTING_POINTS.items():
        values = {"?": "optional", "+": "many"}.get(settings.get("nargs"), "one")
        argv = _without_option(argv, option, values)
    # Before any name is looked up: plugins register the components the names may choose.
    plugins = [plugin_name(plugin) for plugin in chosen.plugins]
    load_plugins(plugins)
    if chosen.resume == AUTO_RESUME:
        chosen.resume = _latest_checkpoint(chosen.output_dir, chosen.run_name)
        argv = _without_option(argv, "--resume")
        if chosen.resume is not None:
            argv += ["--resume", str(chosen.resume)]
    if chosen.resume is not None and chosen.init_from is not None:
        raise UserError(
            "--init-from and --resume exclude each other: --resume continues a run with its "
            "whole state, --init-from starts a new run from another run's weights."
        )
    names = {selector: getattr(chosen, selector) for selector, _ in SLOTS.values()}
    for selector, registry in SLOTS.values():
        if names[selector] is not None:
            registry.get(names[selector])  # an unknown name fails here, listing the valid ones

    saved = None
    default = TrainingConfig() if chosen.preset is None else preset_config(chosen.preset)
    default = with_config_files(default, chosen.config)
    if chosen.resume is not None and (chosen.config or chosen.preset):
        raise UserError(
            "--resume continues a run from its own saved config, which --config and --preset "
            "would replace; drop them to resume, or drop --resume to start a new run from "
            "them (a run's config.json given to --config starts a new run like it)."
        )
    if chosen.resume is not None:
        from toolbox.records.checkpoint import load_checkpoint

        state = load_checkpoint(chosen.resume)
        saved = from_plain(state["config"], f"the config in {chosen.resume}")
        default = saved
    default = with_components(default, **names)
    if plugins:
        all_plugins = tuple(dict.fromkeys([*default.plugins, *plugins]))
        default = dataclasses.replace(default, plugins=all_plugins)
    _refuse_options_of_other_components(argv, default)
    default_checks.install()
    config = tyro.cli(
        TrainingConfig, args=argv, default=default, prog=prog, description=_description()
    )
    validate(config)
    if saved is not None:
        changed = resume_conflicts(saved, config)
        if changed:
            options = ", ".join(f"--{name.replace('_', '-')}" for name in changed)
            raise UserError(
                f"--resume {chosen.resume}: {options} cannot change when a run is resumed "
                "(the checkpoint was trained with the saved values). Drop these flags to "
                "continue the run, or start a new run with them."
            )
    if chosen.print_config is not None:
        sys.stdout.write(dump(config, chosen.print_config))
        raise SystemExit(0)
    return config


STARTING_POINTS = {
    "--plugins": {"nargs": "+", "action": "extend", "default": []},
    "--config": {"type": Path, "action": "append", "default": []},
    "--preset": {},
    "--print-config": {"nargs": "?", "const": "json", "choices": ("json", "yaml")},
}
"""Options read before tyro parses the rest, and shown in the description of --help."""


def _description() -> str:
    """TrainingConfig's docstring, and the options that choose where the config starts."""
    presets = ", ".join(sorted(PRESETS))
    return (
        f"{TrainingConfig.__doc__}\n\n"
        "--config FILE (repeatable) starts from a JSON or YAML file (a run's config.json, or any "
        "subset of its keys); later files override earlier ones, flags override files. "
        f"--preset NAME starts from a registered preset ({presets}); files and flags override "
        "it. --print-config [json|yaml] prints the resolved config and exits (--config reads "
        "it back)."
    )


AUTO_RESUME = Path("auto")


def _latest_checkpoint(output_dir: Path, run_name: str | None) -> Path | None:
    """For --resume auto: the checkpoint of <output_dir>/<run_name> if there is one, else None
    (a fresh start). A directory left by an attempt that crashed before its first checkpoint
    is renamed aside, keeping its logs, so the run can start again under its name."""
    if run_name is None:
        raise UserError(
            "--resume auto needs --run-name: a restarted job finds its run by name (e.g. "
            "--run-name cifar-ddp --resume auto)."
        )
    from toolbox.records.layout import LAST
    from toolbox.records.lock import RunLock, move_aside

    run_dir = output_dir / run_name
    if (run_dir / LAST).exists():
        return run_dir / LAST  # the trainer refuses it while another process holds it
    if run_dir.is_dir() and launched_rank() == 0:
        # Holding its lock while moving it, so that a live attempt is never moved away.
        lock = RunLock.acquire(run_dir, "--resume auto")
        try:
            aside = move_aside(run_dir, "no-checkpoint")
        finally:
            lock.release()
        print(
            f"--resume auto: {run_dir} has no checkpoint; moved it to {aside}, starting over.",
            file=sys.stderr,
        )
    return None


def _without_option(
    argv: list[str], option: str, values: Literal["one", "optional", "many"] = "one"
) -> list[str]:
    """``argv`` without ``option VALUE`` and ``option=VALUE``, every time it is given: with
    ``values`` "optional" the next argument is its value unless it is an option, with "many"
    every argument up to the next option is."""
    kept, taking = [], 0  # taking: values still to drop (-1: until the next option)
    for arg in argv:
        if taking and (values == "one" or not arg.startswith("-")):
            taking -= values != "many"
            continue
        taking = 0
        if arg == option:
            taking = -1 if values == "many" else 1
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def _refuse_options_of_other_components(argv: list[str], config: TrainingConfig) -> None:
    """``--optim.momentum`` with adamw: say which selector brings the option, where tyro
    would only call it unrecognized."""
    for arg in argv:
        slot, dot, option = arg.removeprefix("--").partition("=")[0].partition(".")
        if not arg.startswith("--") or not dot or slot not in SLOTS:
            continue
        field = option.replace("-", "_")
        chosen = getattr(config, slot)
        names = {f.name for f in dataclasses.fields(chosen)}
        if field in names or field.removeprefix("no_") in names:
            continue
        selector, registry = SLOTS[slot]
        owners = [
            name
            for name in registry.names()
            if {field, field.removeprefix("no_")}
            & {f.name for f in dataclasses.fields(registry.get(name))}
        ]
        if owners:
            raise UserError(
                f"--{slot}.{option} is an option of --{selector} {' / '.join(owners)}, but the "
                f"selected {registry.kind} is {getattr(config, selector)}; add --{selector} "
                f"{owners[0]}, or drop --{slot}.{option} (see --{selector} "
                f"{getattr(config, selector)} --help for its options)."
            )
