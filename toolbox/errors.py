"""The one exception type for user mistakes: the entry points print it and exit non-zero."""


class UserError(Exception):
    """A mistake the user can fix (bad option, missing file); shown as one paragraph."""

    exit_code = 2


class RunStopped(Exception):  # noqa: N818 - a requested stop, not an error
    """Training stopped on request (a signal) after saving its position; not an error."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DivergenceError(UserError):
    """The loss became non-finite; the last good checkpoint is kept."""

    exit_code = 3
