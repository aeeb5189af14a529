"""How the command line reports a user's mistake: one paragraph on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from toolbox.launch import rank_label


def print_error(message: str) -> None:
    """One user-facing error paragraph on stderr; soft_wrap keeps paths and commands whole
    for copy and paste."""
    Console(stderr=True, highlight=False).print(
        f"[bold red]{rank_label()}error:[/] {escape(message)}", soft_wrap=True
    )
