"""Records written by a child process, so that their imports and their work never hold up the
training loop: the first drawing of ``curves.png`` imports matplotlib (about a second of one
core), which a process started early does on another core while the data and the model are
built; each request then costs the trainer one line written to a pipe.

One worker per module and per process (``worker``), shared by every run in the process (a
sweep, the tests); it lives until this process ends. A request is a JSON line
``{"id", "function", "arguments"}``; the child calls ``module.function(**arguments)`` and
answers ``{"id", "result" or "error", "seconds"}``. The child ignores Ctrl-C (this process
handles it and closes the pipe) and ends when its pipe closes, however this process ends,
once it has answered the requests already sent. Its output goes nowhere: errors come back
as answers.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Below the trainer's priority: while both have work, training wins the CPU; alone (the
# run's end, waiting for the last drawing) the child still has a whole core.
NICENESS = 5
_SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Worker:
    """A child Python process answering requests to call the functions of ``module``."""

    def __init__(self, module: str) -> None:
        root = Path(__file__).resolve().parents[2]  # the folder that holds toolbox/
        code = (
            f"import sys; sys.path.insert(0, {str(root)!r}); "
            f"from toolbox.records.background import serve; serve({module!r})"
        )
        self.module = module
        self.pid = os.getpid()
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            env={**os.environ, **_SINGLE_THREADED},
        )
        self.alive = True
        self._ids = itertools.count(1)
        self._answers: dict[int, dict] = {}
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name=f"toolbox {module} worker", daemon=True).start()

    def usable(self) -> bool:
        # A forked copy of this process (a DataLoader worker) has no reader thread.
        return self.alive and self.pid == os.getpid()

    def submit(self, function: str, **arguments: Any) -> int | None:
        """Send a request; its number, or None when the child is gone."""
        if not self.usable():
            return None
        number = next(self._ids)
        line = json.dumps({"id": number, "function": function, "arguments": arguments})
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):  # a broken pipe: the child died
            self._gone()
            return None
        return number

    def answer(self, number: int, timeout: float | None = 0.0) -> dict | None:
        """The answer to request ``number``, waiting up to ``timeout`` seconds (None: as long
        as it takes); None if it has not come (or never will: the child is gone)."""
        with self._changed:
            self._changed.wait_for(lambda: number in self._answers or not self.alive, timeout)
            return self._answers.pop(number, None)

    def close(self, timeout: float = 0.2) -> None:
        """Close the pipe, and give the child ``timeout`` seconds to end (an idle one ends at
        once; a busy one finishes its requests on its own, and is not waited for)."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass  # it ends on its own once its last request is done

    def _read(self) -> None:
        try:
            for line in self.process.stdout:
                try:
                    answer = json.loads(line)
                except ValueError:
                    continue
                with self._changed:
                    self._answers[answer.get("id")] = answer
                    self._changed.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            self._gone()

    def _gone(self) -> None:
        with self._changed:
            self.alive = False
            self._changed.notify_all()


_WORKERS: dict[str, Worker] = {}


def worker(module: str) -> Worker | None:
    """This process's worker for ``module``, started on first use (or again after its child
    died); None when no child process can be started here."""
    current = _WORKERS.get(module)
    if current is not None and current.usable():
        return current
    try:
        current = Worker(module)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    _WORKERS[module] = current
    atexit.register(current.close)
    return current


def _forget_workers() -> None:
    _WORKERS.clear()  # a forked child starts its own, if it needs one


os.register_at_fork(after_in_child=_forget_workers)


def serve(module_name: str) -> None:
    """The child's loop: import ``module_name`` (and call its ``warm_up()``, if it has one),
    then answer requests from stdin until it closes."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    answers, sys.stdout = sys.stdout, sys.stderr  # nothing but answers on the pipe
    module = importlib.import_module(module_name)
    try:
        getattr(module, "warm_up", lambda: None)()
    except Exception:  # noqa: BLE001 - the requests report what is wrong
        pass
    for line in sys.stdin:
        started = time.perf_counter()
        answer: dict[str, Any] = {}
        try:
            request = json.loads(line)
            answer["id"] = request["id"]
            answer["result"] = getattr(module, request["function"])(**request["arguments"])
        except Exception as error:  # noqa: BLE001 - sent back, never fatal
            answer["error"] = f"{type(error).__name__}: {error}"
        answer["seconds"] = time.perf_counter() - started
        answers.write(json.dumps(answer, default=str) + "\n")
        answers.flush()
