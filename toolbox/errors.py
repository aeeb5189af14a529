"""The one exception type for user mistakes: the entry points print it and exit non-zero."""


class UserError(Exception):
    """A mistake the user can fix (bad option, missing file); shown as one paragraph."""

    exit_code = 2
