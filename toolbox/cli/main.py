"""The entry points behind train.py and test.py: parse, validate, run, report mistakes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from toolbox.cli.console import print_error, print_stderr
from toolbox.errors import RunStopped, UserError
from toolbox.launch import launched_world_size, rank_label
from toolbox.training.signals import watch_stop_signals


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Runs ``main``; a user mistake becomes one message on stderr and exit code 2."""
    try:
        return main(list(sys.argv[1:] if argv is None else argv))
    except UserError as error:
        print_error(str(error))
        return error.exit_code
    except RunStopped as stopped:
        if not stopped.reported:  # the trainer says itself where it stopped and how to resume
            print_stderr(f"{rank_label()}{stopped}", style="bold")
        return stopped.exit_code
    except KeyboardInterrupt:
        print_stderr("interrupted", style="bold red")
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
    if any(arg == "--search" or arg.startswith("--search=") for arg in argv):
        if launched_world_size() > 1:
            raise UserError(
                "--search trains its trials one after another in each worker process; under "
                "torchrun, start the workers without torchrun (each may use one device)."
            )
        from toolbox.cli.search import run_search

        return run_search(argv, program, test_program)
    if any(arg == "--sweep" or arg.startswith("--sweep=") for arg in argv):
        if launched_world_size() > 1:
            raise UserError(
                "--sweep runs its runs one after another in one process; under torchrun, "
                "start each run of the sweep with its own torchrun command instead."
            )
        from toolbox.cli.sweep import run_sweep

        return run_sweep(argv, train_main, program, test_program)
    from toolbox.cli.parse import parse_training_config
    from toolbox.records import curves

    config = parse_training_config(argv, prog=program)
    # The run will start: the drawer imports matplotlib on the other core while this process
    # imports torch and builds the data and the model.
    curves.start_drawer()
    run_training(config, [program, *argv], test_program)
    return 0


def run_training(
    config, command: list[str] | None = None, test_program: Sequence[str] = ("test.py",)
):
    """Trains ``config`` in this process (one rank of it under torchrun) and returns the
    trainer, whose ``run_dir`` holds the run. ``command`` is recorded in run.json (None: the
    command that reruns the config, ``train.py --config <run>/config.json``)."""
    from toolbox.training import distributed
    from toolbox.training.trainer import Trainer

    context = distributed.start(config.device, config.dist_timeout)
    try:
        trainer = Trainer(
            config, command=command, test_program=tuple(test_program), distributed=context
        )
        trainer.fit()
    except RunStopped:
        distributed.stop(context, together=True)
        raise
    except BaseException:
        distributed.stop(context, together=False)  # the other ranks may be gone
        raise
    distributed.stop(context, together=True)
    return trainer


def test_main(argv: list[str], program: str = "test.py") -> int:
    import tyro

    from toolbox.cli import default_checks
    from toolbox.cli.test_program import split_model_options, with_model_options
    from toolbox.config.evaluate import EvaluateConfig

    own_options, model_options = split_model_options(argv)
    default_checks.install()
    config = tyro.cli(EvaluateConfig, args=own_options, prog=program)
    from toolbox.training.testing import evaluate_run

    adjust = None
    if model_options:

        def adjust(run_config):
            return with_model_options(run_config, model_options, program)

    evaluate_run(config, adjust)
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
