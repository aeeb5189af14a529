"""SIGINT and SIGTERM, watched from the moment a command starts until it returns, so that a
stop asked for at any moment (set-up, training, the end-of-run records, between the runs of
a sweep) is seen and answered with exit code 128 + the signal, never lost. Torch-free."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from toolbox.errors import RunStopped

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The last stop signal this process received while watched."""

    def __init__(self) -> None:
        self.received: int | None = None

    def on_signal(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (writes are atomic)
        self.received = signum

    def raise_if_received(self, what: str) -> None:
        """RunStopped when a signal came; ``what`` says where the command stood and what the
        user may do (e.g. "the run finished and is recorded as such")."""
        if self.received is not None:
            name = signal.Signals(self.received).name
            raise RunStopped(f"stopped by {name}: {what}", 128 + self.received)


_watching: StopSignals | None = None


def active_watch() -> StopSignals | None:
    """The watch of the enclosing ``watch_stop_signals`` block, if any."""
    return _watching


@contextmanager
def watch_stop_signals() -> Iterator[StopSignals]:
    """Install the handlers for the block (nested blocks share the outer watch). Off the
    main thread, where Python cannot install handlers, nothing is watched."""
    global _watching
    if _watching is not None or threading.current_thread() is not threading.main_thread():
        yield _watching or StopSignals()
        return
    watch = StopSignals()
    previous = {signum: signal.signal(signum, watch.on_signal) for signum in STOP_SIGNALS}
    _watching = watch
    try:
        yield watch
    finally:
        _watching = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)
