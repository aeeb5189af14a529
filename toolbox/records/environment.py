"""``env.json``: the versions, device and code a run trained with."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import socket
import sys
from datetime import datetime
from pathlib import Path

import torch

import toolbox
from toolbox.records.run_record import git_state


def _version(package: str) -> str | None:
    """``package.__version__``, without importing the package (torchvision takes a second or
    more to import, and a run on a toolbox dataset may have no other use for it): from the
    module when imported already, else read from its ``version.py``."""
    module = sys.modules.get(package)
    if module is not None:
        return getattr(module, "__version__", None)
    try:
        spec = importlib.util.find_spec(package)
        folder = Path(spec.submodule_search_locations[0])
        text = (folder / "version.py").read_text(encoding="utf-8")
    except (AttributeError, ImportError, IndexError, OSError, TypeError, ValueError):
        text = ""
    found = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", text, re.MULTILINE)
    if found:
        return found.group(1)
    try:  # the distribution's version, without a local label such as "+cu132"
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
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
