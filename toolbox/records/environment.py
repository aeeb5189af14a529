"""``env.json``: the versions, device and code a run trained with."""

from __future__ import annotations

import platform
import socket
import sys
from datetime import datetime
from pathlib import Path

import torch

import toolbox
from toolbox.records.run_record import git_state


def environment(device: torch.device) -> dict:
    import torchvision

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "toolbox": toolbox.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": device_name,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git": git_state(Path(toolbox.__file__).resolve().parent),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
