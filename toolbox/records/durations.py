"""How the toolbox writes a duration, in the log, the progress display and curves.png."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """``seconds`` as ``"45.3s"`` (tenths below a minute), ``"2m 05s"`` below an hour, and
    ``"3h 07m"`` from there on; ``"?"`` for a value that is not finite (an ETA not known
    yet). A negative duration counts as 0."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(seconds, 0.0)
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60}h {minutes % 60:02d}m"
