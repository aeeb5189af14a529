"""Atomic writes of the run records: the toolbox's one atomic, durable write, which lives in
``toolbox.data.atomic`` (a layer below, where the dataset cache can use it too)."""

from __future__ import annotations

from toolbox.data.atomic import (  # noqa: F401 - re-exported: the records' name for them
    fsync_directory,
    is_temporary,
    temporary_path,
    write_atomically,
    write_json,
    write_text,
)
