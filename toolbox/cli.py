"""The entry points behind train.py and test.py: parse, validate, run, report mistakes."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import tyro
from rich.console import Console
from rich.markup import escape

from toolbox.config import (
    SLOTS,
    TrainingConfig,
    from_plain,
    resume_conflicts,
    validate,
    with_components,
)
from toolbox.errors import ArgumentParser, RunStopped, UserError
from toolbox.launch import launched_rank, launched_world_size, rank_label
from toolbox.run_lock import RunLock, move_aside
from toolbox.stop_signals import watch_stop_signals


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
    chosen, _ = selectors.parse_known_args(argv)
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
    default = TrainingConfig()
    if chosen.resume is not None:
        from toolbox.checkpoint import load_checkpoint

        state = load_checkpoint(chosen.resume)
        saved = from_plain(state["config"], f"the config in {chosen.resume}")
        default = saved
    default = with_components(default, **names)
    _refuse_options_of_other_components(argv, default)
    config = tyro.cli(TrainingConfig, args=argv, default=default, prog=prog)
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
    return config


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
    from toolbox.checkpoint import LAST

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


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` and ``option=VALUE``."""
    kept, skip_value = [], False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == option:
            skip_value = True
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


def print_error(message: str) -> None:
    """One user-facing error paragraph on stderr; soft_wrap keeps paths and commands whole
    for copy and paste."""
    Console(stderr=True, highlight=False).print(
        f"[bold red]{rank_label()}error:[/] {escape(message)}", soft_wrap=True
    )


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Runs ``main``; a user mistake becomes one message on stderr and exit code 2."""
    try:
        return main(list(sys.argv[1:] if argv is None else argv))
    except UserError as error:
        print_error(str(error))
        return error.exit_code
    except RunStopped as stopped:
        if not stopped.reported:  # the trainer says itself where it stopped and how to resume
            Console(stderr=True, highlight=False).print(
                f"[bold]{rank_label()}{escape(str(stopped))}[/]", soft_wrap=True
            )
        return stopped.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("[bold red]interrupted[/]")
        return 130
    except BrokenPipeError:
        # The reader went away (`train.py --help | head`): stop writing, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def train_main(
    argv: list[str], program: str = "train.py", test_program: Sequence[str] = ("test.py",)
) -> int:
    """train.py's work. ``program`` is the script and ``test_program`` the script and its
    leading arguments that messages and records name for resuming and evaluating the run: a
    script that registers components of its own passes itself, since train.py does not know
    them. A stop signal at any moment, from here to the return, ends it with 128 + signal."""
    with watch_stop_signals() as signals:
        exit_code = _train_or_sweep(argv, program, tuple(test_program))
        signals.raise_if_received("after the run had finished; it is complete and recorded so")
    return exit_code


def _train_or_sweep(argv: list[str], program: str, test_program: tuple[str, ...]) -> int:
    if any(arg == "--sweep" or arg.startswith("--sweep=") for arg in argv):
        if launched_world_size() > 1:
            raise UserError(
                "--sweep runs its runs one after another in one process; under torchrun, "
                "start each run of the sweep with its own torchrun command instead."
            )
        from toolbox.sweep import run_sweep

        return run_sweep(argv, program, test_program)
    config = parse_training_config(argv, prog=program)
    from toolbox import distributed
    from toolbox.trainer import Trainer

    context = distributed.start(config.device, config.dist_timeout)
    try:
        Trainer(
            config,
            command=[program, *argv],
            test_program=test_program,
            distributed=context,
        ).fit()
    except RunStopped:
        distributed.stop(context, together=True)
        raise
    except BaseException:
        distributed.stop(context, together=False)  # the other ranks may be gone
        raise
    distributed.stop(context, together=True)
    return 0


def test_main(argv: list[str], program: str = "test.py") -> int:
    from toolbox.evaluate_run import EvaluateConfig, split_model_options

    own_options, model_options = split_model_options(argv)
    config = tyro.cli(EvaluateConfig, args=own_options, prog=program)
    from toolbox.evaluate_run import evaluate_run

    evaluate_run(config, model_options, program)
    return 0


def script_main(defaults: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """The entry point of a script that registers components of its own (see examples/), which
    train.py and test.py do not know: ``SCRIPT [options]`` trains, ``defaults`` coming before
    the options so that these win, and ``SCRIPT test RUN [options]`` evaluates. Messages and
    run.json name the script for resuming and evaluating."""
    script = sys.argv[0]
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["test"]:
        return run_cli(lambda args: test_main(args, f"{script} test"), argv[1:])
    return run_cli(
        lambda args: train_main(args, program=script, test_program=(script, "test")),
        [*defaults, *argv],
    )
