"""The one exception type for user mistakes: the entry points print it and exit non-zero."""

import argparse


class UserError(Exception):
    """A mistake the user can fix (bad option, missing file); shown as one paragraph."""

    exit_code = 2


class RunStopped(Exception):  # noqa: N818 - a requested stop, not an error
    """Training stopped on request (a signal) after saving its position; not an error."""

    def __init__(self, message: str, exit_code: int, *, reported: bool = False) -> None:
        """``reported``: the trainer has already told the user where it stopped."""
        super().__init__(message)
        self.exit_code = exit_code
        self.reported = reported


class DivergenceError(UserError):
    """The loss became non-finite; the last good checkpoint is kept."""

    exit_code = 3


class LostContactError(UserError):
    """Under torchrun, another process died or hung; the last checkpoint is kept."""

    exit_code = 1


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are UserErrors (one message, exit 2) instead of its own exit;
    ``hint`` ends the message (e.g. where the usage is)."""

    def __init__(self, *args, hint: str = "", **kwargs) -> None:
        kwargs.setdefault("add_help", False)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.hint = hint or f"see python {self.prog} --help."

    def error(self, message: str) -> None:
        raise UserError(f"{message}; {self.hint}")
