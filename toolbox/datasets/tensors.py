from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from toolbox.component import free_on_resume
from toolbox.datasets import (
    DatasetInfo,
    DatasetSplits,
    HeldOutDatasetConfig,
    Task,
    register_dataset,
)
from toolbox.errors import UserError

if TYPE_CHECKING:
    import torch

TORCH_SUFFIXES = (".pt", ".pth")
_SUMMARIES: dict[tuple, tuple[Task | None, str | None]] = {}
"""(task, problem) of each file read for --data.task auto, by (file, size, mtime)."""


@register_dataset("tensors")
@dataclass(frozen=True)
class Tensors(HeldOutDatasetConfig):
    """Arrays of your own: a .pt file holding a dict of tensors, or an .npz file, with an
    ``input`` and a ``target`` array of one row per sample. Any other array of as many rows
    travels beside them in every split's batches (for models with their own steps); an
    optional ``class_names`` (a list of str in a .pt, a string array in an .npz) names the
    classes. The rows are split into test, validation and training data by --data.split-seed;
    test.py's predictions name each sample by its 0-based row in the file."""

    path: str = free_on_resume("")
    """The file to read (required): .pt or .pth (read with torch.load(weights_only=True), so
    it holds tensors, not pickled objects) or .npz (numpy, allow_pickle=False)."""
    task: Literal["auto", "classification", "regression"] = "auto"
    """auto: an integer (or bool) target is classification (classes 0..max), a floating one
    regression (one output per target value of a sample)."""

    def __post_init__(self) -> None:
        # The task must be known before build (criteria and metrics are checked against it):
        # auto reads the file once. An unreadable file is reported by problems().
        if self.task == "auto" and self.path:
            task, _ = self._summary()
            object.__setattr__(self, "task", task or "classification")

    def problems(self) -> list[str]:
        found = super().problems()
        if self.path:
            _, problem = self._summary()
            if problem:
                found.append(problem)
        return found

    def _summary(self) -> tuple[Task | None, str | None]:
        """The task the file's target implies, or the problem that stops it being read."""
        file = Path(self.path).expanduser()
        try:
            stat = file.stat()
        except OSError:
            return None, self._missing()
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _SUMMARIES:
            try:
                arrays, _ = self._read()
                _SUMMARIES[key] = (_implied_task(arrays["target"]), None)
            except UserError as error:
                _SUMMARIES[key] = (None, str(error))
        return _SUMMARIES[key]

    def _missing(self) -> str:
        file = Path(self.path).expanduser()
        what = "is a directory" if file.is_dir() else "does not exist"
        return (
            f"{self.option('path')} {self.path} {what}; give the path of a .pt file (a dict of "
            "tensors saved with torch.save) or an .npz file (numpy.savez)."
        )

    def _read(self) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
        """The file's arrays as tensors, checked, and its class names (if any)."""
        import numpy as np
        import torch

        option = f"{self.option('path')} {self.path}"
        if not self.path:
            raise UserError(
                f"{self.option('path')} is not given; name the file to read, e.g. "
                f"{self.option('path')} features.pt (or features.npz)."
            )
        file = Path(self.path).expanduser()
        if not file.is_file():
            raise UserError(self._missing())
        suffix = file.suffix.lower()
        if suffix in TORCH_SUFFIXES:
            try:
                loaded = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001 - pickled objects, a damaged file
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise UserError(
                    f"{option} cannot be read with torch.load(weights_only=True) "
                    f"({type(error).__name__}: {first}); save a dict of tensors only (e.g. "
                    "torch.save({'input': x, 'target': y}, path)), no pickled objects."
                ) from None
        elif suffix == ".npz":
            try:
                with np.load(file, allow_pickle=False) as archive:
                    loaded = {name: archive[name] for name in archive.files}
            except Exception as error:  # noqa: BLE001 - object arrays, a damaged file
                raise UserError(
                    f"{option} cannot be read with numpy.load(allow_pickle=False) "
                    f"({type(error).__name__}: {error}); save numeric arrays only (e.g. "
                    "numpy.savez(path, input=x, target=y)), no object arrays."
                ) from None
        else:
            raise UserError(
                f"{option} has the suffix {file.suffix!r}; give a .pt, .pth or .npz file."
            )
        if not isinstance(loaded, dict):
            raise UserError(
                f"{option} holds a {type(loaded).__name__}, not a dict of tensors; save "
                "e.g. torch.save({'input': x, 'target': y}, path)."
            )
        class_names = loaded.pop("class_names", ())
        if isinstance(class_names, np.ndarray) and class_names.dtype.kind in "US":
            class_names = class_names.astype(str).tolist()
        if not isinstance(class_names, (list, tuple)) or not all(
            isinstance(name, str) for name in class_names
        ):
            raise UserError(f"{option}: class_names must be a list of strings.")
        arrays = {}
        for name, value in loaded.items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                value = torch.from_numpy(value)
            if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.is_complex():
                kind = f"{value.dtype} array" if hasattr(value, "dtype") else type(value).__name__
                raise UserError(
                    f"{option}: entry {name!r} is a {kind}; every entry must be a numeric "
                    "array with one row per sample (class_names: a list of strings)."
                )
            arrays[str(name)] = value
        for required in ("input", "target"):
            if required not in arrays:
                raise UserError(
                    f"{option} has no {required!r} array (it holds: "
                    f"{', '.join(arrays) or 'nothing'}); save the inputs as 'input' and what "
                    "to predict as 'target'."
                )
        lengths = {name: len(value) for name, value in arrays.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{name} {length:,}" for name, length in lengths.items())
            raise UserError(
                f"{option} holds arrays of different lengths ({listed}); every array needs "
                "one row per sample, in the same order."
            )
        return arrays, tuple(class_names)

    def build(self) -> DatasetSplits:
        import torch

        from toolbox.data.splits import take

        arrays, class_names = self._read()
        task = self.task if self.task != "auto" else _implied_task(arrays["target"])
        option = f"{self.option('path')} {self.path}"
        inputs, target = arrays["input"], arrays["target"]
        if inputs.dtype != torch.uint8:
            inputs = inputs.float()
        if inputs.ndim == 1:
            inputs = inputs.unsqueeze(1)
        if task == "classification":
            if target.is_floating_point():
                raise UserError(
                    f"{self.option('task')} is classification but the target of {option} is "
                    f"{target.dtype}; save integer class indices, or use "
                    f"{self.option('task')} regression."
                )
            target = target.long()
            if target.ndim != 1 or (len(target) and target.min() < 0):
                raise UserError(
                    f"{option}: a classification target must be (N,) class indices 0..K-1; "
                    f"it has shape {tuple(target.shape)} and its lowest value is "
                    f"{target.min().item() if target.numel() else None}."
                )
            num_outputs = int(target.max().item()) + 1 if len(target) else 1
            if class_names and len(class_names) < num_outputs:
                raise UserError(
                    f"{option} names {len(class_names)} classes in class_names but its target "
                    f"goes up to {num_outputs - 1}; give one name per class."
                )
            num_outputs = max(num_outputs, len(class_names))
            class_names = class_names or tuple(str(label) for label in range(num_outputs))
        else:
            target = target.float().reshape(len(target), -1)
            num_outputs, class_names = target.shape[1], ()
        everything = {**arrays, "input": inputs, "target": target}

        rows = self.three_splits(len(inputs))
        if len(rows["train"]) == 0:
            raise UserError(
                f"{option} holds {len(inputs)} rows, which leaves no training row after "
                f"{self.option('test_fraction')} {self.test_fraction} and "
                f"{self.option('val_fraction')} {self.val_fraction}; give more rows."
            )
        splits = {name: take(everything, index) for name, index in rows.items()}
        mean, std = _statistics(splits["train"]["input"])
        info = DatasetInfo(
            task=task,
            input_shape=tuple(inputs.shape[1:]),
            num_outputs=num_outputs,
            mean=mean,
            std=std,
            class_names=class_names,
            value_range=(0.0, 255.0) if inputs.dtype == torch.uint8 else None,
        )
        sources = {name: [str(row) for row in index.tolist()] for name, index in rows.items()}
        return DatasetSplits(info, **splits, sources=sources, source_column="row")


def _implied_task(target: torch.Tensor) -> Task:
    return "regression" if target.is_floating_point() else "classification"


def _statistics(inputs: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-feature mean and std of (N, F) inputs, per-channel (dim 1) of (N, C, ...) ones,
    in stored units; a constant feature gets std 1 (normalising must not divide by 0)."""
    import torch

    values = inputs.double()
    dims = [0] if values.ndim == 2 else [0, *range(2, values.ndim)]
    if len(values) < 2:
        return (0.0,), (1.0,)
    mean = values.mean(dim=dims)
    std = values.std(dim=dims)
    std = std.where(std > 0, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())
