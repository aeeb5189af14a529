"""The device, precision and random state of a run."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from toolbox.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names, or a clear error when this machine does not have it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device is {name!r} but this machine has no usable CUDA device; "
                "use --device cpu (or auto)."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device is {name!r} but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), numbered from 0; pick one of them."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device is {name!r} but MPS is not available; use --device cpu.")
    return device


def build_model(config, info, device: torch.device) -> torch.nn.Module:
    """The config's model for this dataset, on ``device``, channels-last when asked: the
    same for training and for test.py."""
    model = config.model.build(info).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def input_normalizer(config, info, device: torch.device):
    from toolbox.data.loaders import Normalizer

    return Normalizer(info.mean, info.std, len(info.input_shape), device, config.channels_last)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """Python, numpy, torch and CUDA generator states as tensors and plain values, so that
    the checkpoint holding them loads with ``weights_only=True``."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
