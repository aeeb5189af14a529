"""What torchrun told this process, read without importing torch: error messages and
--help must not pay for it."""

from __future__ import annotations

import os


def launched_world_size() -> int:
    """The number of processes torchrun started (1 for a plain ``python train.py``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def rank_label() -> str:
    """ "rank R/W: " under torchrun, so a message says which process wrote it; else ""."""
    world_size = launched_world_size()
    return f"rank {launched_rank()}/{world_size}: " if world_size > 1 else ""
