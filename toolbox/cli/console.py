"""How the command line reports a user's mistake: one paragraph on stderr. rich loads on the
first message: --help and a clean run's start do not pay for it."""

from __future__ import annotations

from toolbox.launch import rank_label


def print_stderr(text: str, style: str) -> None:
    """``text`` (not markup) in ``style`` on stderr; soft_wrap keeps paths and commands whole
    for copy and paste."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(f"[{style}]{escape(text)}[/]", soft_wrap=True)


def print_error(message: str) -> None:
    """One user-facing error paragraph on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(
        f"[bold red]{rank_label()}error:[/] {escape(message)}", soft_wrap=True
    )
