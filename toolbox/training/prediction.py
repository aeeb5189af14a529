"""predict.py's work: a trained run on new inputs (image files and folders, a table, a tensor
file), read as the run's dataset read its own, batched on the device, one row per input."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toolbox.datasets import DatasetInfo
from toolbox.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TENSOR_SUFFIXES = (".pt", ".npz")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".parquet", ".pq")


@dataclass
class Inputs:
    """New inputs in chunks: each chunk's names (a file's path, a row) and its tensor in the
    form the dataset stores; the unreadable ones are collected as the chunks are read."""

    chunks: Iterator[tuple[list[str], torch.Tensor]]
    name_column: str
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """(name, reason) of each input left out."""


def read_inputs(paths: list[Path], config, info: DatasetInfo, batch_size: int) -> Inputs:
    """The inputs ``paths`` name: tables (for a table run), .pt/.npz files of inputs, or
    image files and folders of them."""
    kinds = {
        "table"
        if p.suffix.lower() in TABLE_SUFFIXES
        else "tensors"
        if p.suffix.lower() in TENSOR_SUFFIXES
        else "images"
        for p in paths
    }
    if len(kinds) > 1:
        raise UserError(
            f"the inputs mix {' and '.join(sorted(kinds))}; give one kind to one predict.py."
        )
    kind = kinds.pop()
    if kind == "images":
        return _images(paths, info, batch_size)
    if kind == "table":
        encode = getattr(config.data, "encode_table", None)
        if encode is None:
            raise UserError(
                f"{paths[0]} is a table, but this run was trained on --dataset "
                f"{config.dataset}; give inputs of its kind (image files or a .pt/.npz)."
            )
        tables = [(path, encode(path)) for path in paths]
    else:
        tables = [(path, _tensor_file_inputs(path)) for path in paths]
    named = [
        (f"{path}:{row}" if len(tables) > 1 else str(row), inputs[row])
        for path, inputs in tables
        for row in range(len(inputs))
    ]
    for path, inputs in tables:
        if tuple(inputs.shape[1:]) != tuple(info.input_shape):
            raise UserError(
                f"{path} holds inputs of shape {tuple(inputs.shape[1:])}, but this run's "
                f"model takes {tuple(info.input_shape)}; give inputs like its dataset's."
            )
    return Inputs(_chunked(named, batch_size), name_column="row")


def _chunked(named: list, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    for start in range(0, len(named), batch_size):
        chunk = named[start : start + batch_size]
        yield [name for name, _ in chunk], torch.stack([value for _, value in chunk])


def _tensor_file_inputs(path: Path) -> torch.Tensor:
    """The ``input`` array of a .pt dict (read with weights_only=True) or an .npz."""
    import numpy as np

    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                data = {key: torch.from_numpy(arrays[key]) for key in arrays.files}
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - numpy and torch raise many kinds
        raise UserError(
            f"{path} cannot be read as a tensor file ({type(error).__name__}: {error}); give "
            "a .pt dict of tensors or an .npz with an 'input' array."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("input"), torch.Tensor):
        raise UserError(f"{path} holds no 'input' tensor; save a dict with an 'input' array.")
    return data["input"]


def _image_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise UserError(
                    f"{path} holds no image (a file ending in {', '.join(IMAGE_SUFFIXES)})."
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path} does not exist; give image files or folders of them.")
    return files


def _images(paths: list[Path], info: DatasetInfo, batch_size: int) -> Inputs:
    """Image files decoded as the folder dataset decodes its own: the run's channels, the
    shorter side resized to the model's input size and centre-cropped square."""
    from toolbox.data.images import read_image

    shape = tuple(info.input_shape)
    if len(shape) != 3 or info.value_range != (0.0, 255.0):
        raise UserError(
            f"this run's inputs are not images (its model takes {shape}); give a "
            ".pt/.npz of inputs, or a table for a table run."
        )
    channels, height, width = shape
    files = _image_files(paths)
    inputs = Inputs(iter(()), name_column="path")

    def chunks() -> Iterator[tuple[list[str], torch.Tensor]]:
        names, images = [], []
        for file in files:
            try:
                image = read_image(str(file), channels, height if height == width else 0)
            except Exception as error:  # noqa: BLE001 - PIL raises many kinds for bad files
                inputs.unreadable.append((str(file), type(error).__name__))
                continue
            if tuple(image.shape) != shape:
                inputs.unreadable.append((str(file), f"size {tuple(image.shape)}, not {shape}"))
                continue
            names.append(str(file))
            images.append(image)
            if len(images) == batch_size:
                yield names, torch.stack(images)
                names, images = [], []
        if images:
            yield names, torch.stack(images)

    inputs.chunks = chunks()
    return inputs


def predict_rows(model, inputs: Inputs, info: DatasetInfo, device, top_k: int, progress):
    """One dict per input: its name, and the prediction (the class, its name and probability,
    and the ``top_k`` most probable classes; a regression run's values)."""
    rows = []
    with torch.inference_mode():
        for names, batch in inputs.chunks:
            outputs = model(batch.to(device)).float().cpu()
            progress(len(names))
            if info.task != "classification":
                values = outputs.reshape(len(names), -1)
                for name, value in zip(names, values.tolist(), strict=True):
                    columns = (
                        {"prediction": value[0]}
                        if len(value) == 1
                        else {f"prediction_{i}": v for i, v in enumerate(value)}
                    )
                    rows.append({inputs.name_column: name, **columns})
                continue
            probabilities = outputs.softmax(dim=1)
            top = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
            for name, values, classes in zip(
                names, top.values.tolist(), top.indices.tolist(), strict=True
            ):
                row = {inputs.name_column: name, "prediction": classes[0]}
                row["prediction_name"] = _class_name(info, classes[0])
                row["probability"] = values[0]
                if top_k > 1:
                    for rank, (cls, value) in enumerate(zip(classes, values, strict=True), start=1):
                        row[f"top{rank}_name"] = _class_name(info, cls)
                        row[f"top{rank}_probability"] = value
                rows.append(row)
    return rows


def _class_name(info: DatasetInfo, index: int) -> str:
    return info.class_names[index] if info.class_names else str(index)
