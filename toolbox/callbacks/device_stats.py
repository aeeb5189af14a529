"""device_stats: the device's memory and utilisation every N steps, to the trackers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from toolbox.callbacks import Callback, CallbackConfig, register_callback


@register_callback("device_stats")
@dataclass(frozen=True)
class DeviceStats(CallbackConfig):
    """Log the device's memory (allocated, reserved, peak) and utilisation on CUDA, and the
    process's resident memory on the CPU, every N optimizer steps."""

    every: int = 50
    """Optimizer steps between two measurements."""

    def problems(self) -> list[str]:
        return self.not_positive("every")

    def build(self) -> Callback:
        return DeviceStatsLogger(self)


MB = 2**20
STATM = Path("/proc/self/statm")
"""Linux's page counts of this process: its size, then its resident set."""


class DeviceStatsLogger(Callback):
    """Reads the allocator's counters (no kernel, no sync) and, where pynvml is installed,
    the GPU's utilisation, every ``every`` optimizer steps."""

    def __init__(self, options: DeviceStats) -> None:
        self.options = options
        self.utilization_readable = True
        """False once torch.cuda.utilization failed (no pynvml, no NVML): not tried again."""

    def on_step_end(self, trainer, step: int) -> None:
        if step % self.options.every == 0:
            trainer.log_values(self.measure(trainer.device), step)

    def measure(self, device) -> dict[str, float]:
        values = {}
        if device.type == "cuda":
            import torch

            values["device/memory_allocated_mb"] = torch.cuda.memory_allocated(device) / MB
            values["device/memory_reserved_mb"] = torch.cuda.memory_reserved(device) / MB
            values["device/max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(device) / MB
            if self.utilization_readable:
                try:
                    values["device/utilization_percent"] = float(torch.cuda.utilization(device))
                except Exception:  # pynvml missing, or NVML unusable here: optional anyway
                    self.utilization_readable = False
        resident = resident_memory_mb()
        if resident is not None:
            values["host/resident_memory_mb"] = resident
        return values


def resident_memory_mb() -> float | None:
    """This process's resident memory now (None where /proc is not there: not Linux)."""
    try:
        resident_pages = int(STATM.read_text().split()[1])
    except OSError:
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / MB
