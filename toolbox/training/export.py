"""``python -m toolbox export``'s work: a trained run's model as files that other programs load
(safetensors weights, an ONNX graph, a TorchScript program), each taking raw inputs as the
dataset stores them (uint8 pixels, unscaled table features) with the normalisation folded in
and any batch size, and each checked against torch on a batch before it is reported.

Every file is written atomically (temporary file, fsync, rename): an export that fails or is
killed leaves the previous file or none, never a torn one that looks whole."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import toolbox
from toolbox.errors import UserError
from toolbox.records import checkpoint as checkpoints
from toolbox.records.atomic import write_atomically, write_json
from toolbox.training.inference import RawInputModel, checkpoint_of, load_trained_model

FILES = {
    "safetensors": "model.safetensors",
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
}
"""Each format's file under ``<run>/export/``."""
MANIFEST = "model.json"
"""What the exported files take and give, where they came from, and how well they matched."""
DIRECTORY = "export"
INPUT_NAME, OUTPUT_NAME = "input", "output"
"""The ONNX graph's input and output names."""
INSTALL_HINT = "uv sync --extra export"
TOLERANCE = 1e-4
"""Largest |format - torch| that counts as a match, per unit of the outputs' scale (the
largest |torch output|, at least 1): float32 logits of tens differ in their 6th digit."""


@dataclass
class FormatResult:
    """One exported file and how far its outputs were from torch's on the check batches."""

    file: str
    max_abs_diff: float | None
    """Largest |format - torch| over the check batches; None when the check was skipped."""
    checked_batch_sizes: list[int] = field(default_factory=list)
    tolerance: float | None = None
    """The largest difference that counts as a match on these outputs."""
    matches: bool | None = None
    note: str = ""
    """Why the check was skipped, or how the file was made."""


@dataclass
class Export:
    """What ``export_run`` wrote: the directory, each format's result, and model.json's
    content (``check_inputs`` in it says where the check batch came from)."""

    directory: Path
    results: dict[str, FormatResult]
    manifest: dict


def export_run(
    run: Path,
    formats: list[str],
    checkpoint: str = "best",
    ema: bool = True,
    opset: int | None = None,
    batch_size: int = 16,
    random_inputs: bool = False,
    progress: Callable[[str], None] = lambda line: None,
) -> Export:
    """Writes ``formats`` (keys of FILES) and model.json into ``<run>/export/``. The check
    batch is up to ``batch_size`` validation samples (random values in the inputs' range
    when ``random_inputs`` or the dataset cannot be built); a batch of 1 is checked too, so
    that a batch size baked into a graph shows. ``progress`` hears what is being done."""
    path = checkpoint_of(Path(run), checkpoint)
    state = checkpoints.load_checkpoint(path)
    model = load_trained_model(path, device="cpu", ema=ema)
    if model.config.model.own_steps:
        raise UserError(
            f"{model.config.arch} trains with its own steps: its forward takes more than a "
            "batch of inputs (e.g. noisy images and their timesteps), so it is no inputs -> "
            "outputs model to export; export models such as mlp, cnn, resnet18 or vit_tiny."
        )
    batch, check_inputs = check_batch(model, batch_size, random_inputs)
    batches = [batch, batch[:1]]
    with torch.no_grad():
        references = [model(inputs) for inputs in batches]

    # Everything is made in memory first: an exporter that fails writes no file.
    progress(f"exporting {model.config.arch} ({', '.join(formats)})")
    made = {name: MAKERS[name](model, batch, opset) for name in formats}
    directory = path.parent / DIRECTORY
    directory.mkdir(exist_ok=True)
    results = {}
    for name in formats:
        target = directory / FILES[name]
        write_atomically(target, made[name], by_path=True)
        progress(f"checking {target}")
        results[name] = CHECKS[name](target, model, batches, references)
    manifest = _manifest(model, state, path, batch.dtype, ema, results)
    manifest["check_inputs"] = check_inputs
    write_json(directory / MANIFEST, manifest)
    return Export(directory, results, manifest)


def check_batch(model: RawInputModel, count: int, random_inputs: bool) -> tuple[torch.Tensor, str]:
    """Up to ``count`` (at least 2, so that the traced batch size is not 1, which export
    would specialise on) inputs as the dataset stores them, and where they came from: the
    validation split (or test, or train, the first that has samples), else random values in
    the inputs' range, of the dtype the dataset stores."""
    if not random_inputs:
        try:
            samples = _dataset_samples(model.config.data.build(), count)
        except (UserError, OSError) as error:
            reason = f"its dataset could not be built ({str(error).splitlines()[0]})"
        else:
            if samples is not None and len(samples[0]) >= 2:
                return samples
            reason = "its dataset has fewer than 2 samples"
    else:
        reason = "--check-inputs random"
    dtype = stored_dtype(model.info.value_range)
    generator = torch.Generator().manual_seed(0)
    shape = (max(count, 2), *model.info.input_shape)
    if model.info.value_range is None:  # unbounded: spread as the training split is
        inputs = torch.randn(shape, generator=generator) / model.inv_std + model.mean
        values = "normal values of the training mean and std"
    elif dtype == torch.uint8:
        low, high = (int(bound) for bound in model.info.value_range)
        inputs = torch.randint(low, high + 1, shape, generator=generator).to(torch.uint8)
        values = f"uint8 values in [{low}, {high}]"
    else:
        low, high = model.info.value_range
        inputs = low + (high - low) * torch.rand(shape, generator=generator)
        values = f"float32 values in [{low:g}, {high:g}]"
    return inputs, f"{len(inputs)} samples of random {values} ({reason})"


def _dataset_samples(splits, count: int) -> tuple[torch.Tensor, str] | None:
    """Up to ``count`` inputs of the first split that has any, and which split that is."""
    for name, label in (("val", "validation"), ("test", "test"), ("train", "training")):
        available = splits.count(name)
        if available:
            split = splits.split(name)
            taken = min(count, available)
            inputs = (
                split["input"][:taken] if isinstance(split, dict) else split.decoded(range(taken))
            )
            return inputs, f"{taken} {label} samples"
    return None


def stored_dtype(value_range: tuple[float, float] | None) -> torch.dtype:
    """The dtype a dataset with inputs in ``value_range`` stores, where no sample is at hand:
    the built-in datasets keep bytes (0..255 pixels, 0..16 for digits) as uint8 and
    everything else (unbounded tables, tensors, tracks) as float32."""
    if value_range is not None:
        low, high = value_range
        if float(low).is_integer() and float(high).is_integer() and 0 <= low < high <= 255:
            return torch.uint8
    return torch.float32


# --- Making each format: a writer of the file at the temporary path it is given ------------


def _make_safetensors(model: RawInputModel, batch: torch.Tensor, opset: int | None):
    from safetensors.torch import save

    # A contiguous copy of each: safetensors stores a tensor's own bytes, and refuses tensors
    # that share memory (views into one storage, tied weights).
    tensors = {key: value.clone().contiguous() for key, value in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})
    return lambda path: Path(path).write_bytes(data)


def _adaptive_max_pool2d(inputs: torch.Tensor, output_size: list[int]):
    """aten.adaptive_max_pool2d (values and flat indices, as torch gives them, first maximum
    on ties) from one max per window. cnn pools 14x14 maps to 4x4 on 28 px images, windows
    of uneven stride that neither ONNX exporter translates; the spatial size is fixed at
    export (only the batch varies), so the windows are known."""
    height, width = inputs.shape[-2:]
    values, indices = [], []
    for top, bottom in _windows(height, output_size[0]):
        for left, right in _windows(width, output_size[1]):
            value, index = inputs[..., top:bottom, left:right].flatten(-2).max(-1)
            span = right - left
            values.append(value)
            indices.append((top + index // span) * width + left + index % span)
    grid = tuple(output_size)
    return torch.stack(values, -1).unflatten(-1, grid), torch.stack(indices, -1).unflatten(-1, grid)


def _windows(size: int, count: int) -> list[tuple[int, int]]:
    """Adaptive pooling's windows: [floor(i * size / count), ceil((i + 1) * size / count))."""
    return [(i * size // count, -(-(i + 1) * size // count)) for i in range(count)]


DECOMPOSITIONS = {torch.ops.aten.adaptive_max_pool2d.default: _adaptive_max_pool2d}
"""Ops the ONNX exporter cannot translate, decomposed into ones it can before it runs."""


def _make_onnx(model: RawInputModel, batch: torch.Tensor, opset: int | None):
    """torch.export with a dynamic batch dimension, then the dynamo ONNX exporter (the
    legacy TorchScript-based one is deprecated, and fails on cnn's pooling too)."""
    dynamic = ({0: torch.export.Dim("batch")},)
    try:
        program = torch.export.export(model, (batch,), dynamic_shapes=dynamic)
        program = program.run_decompositions(DECOMPOSITIONS)
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            dynamic_shapes=dynamic,  # names the dimension "batch" in the graph
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            verbose=False,
        )
    except Exception as error:  # the exporters raise many types; the first line says which op
        raise UserError(
            f"the ONNX exporter cannot export {model.config.arch}: "
            f"{str(error).strip().splitlines()[0]}; export the other formats with "
            "--format safetensors torchscript."
        ) from error
    # One file: weights as external data would be named after the temporary, not the model.
    return lambda path: onnx_program.save(path, external_data=False)


def _make_torchscript(model: RawInputModel, batch: torch.Tensor, opset: int | None):
    """torch.jit.trace: torch.jit.script cannot compile vit_tiny's attention. A trace could
    bake in the batch size; the check on a batch of another size would show it."""
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but still asked for; the trace's warnings about
        # Python-side shape checks are answered by the checks on two batch sizes.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, (batch,))
    return lambda path: _quietly(torch.jit.save, traced, str(path))


MAKERS = {"safetensors": _make_safetensors, "onnx": _make_onnx, "torchscript": _make_torchscript}


# --- Checking each file as it lies on disk ------------------------------------------------


def _max_abs_diff(outputs: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    for output, reference in zip(outputs, references, strict=True):
        if output.shape != reference.shape:
            raise UserError(
                f"the exported model gave outputs of shape {tuple(output.shape)} where torch "
                f"gives {tuple(reference.shape)}; its batch dimension is not dynamic."
            )
    return max((o.float() - r).abs().max().item() for o, r in zip(outputs, references, strict=True))


def _check_safetensors(path: Path, model: RawInputModel, batches, references) -> FormatResult:
    """Loads the file into a freshly built model of the run's config."""
    from safetensors.torch import load_file

    fresh = RawInputModel(model.config.model.build(model.info), model.info).eval()
    fresh.load_state_dict(load_file(path), strict=True)
    with torch.no_grad():
        outputs = [fresh(inputs) for inputs in batches]
    return _result(path, outputs, references, batches, "loaded into a fresh model")


def _check_onnx(path: Path, model: RawInputModel, batches, references) -> FormatResult:
    import onnx

    opset = next(entry.version for entry in onnx.load(path).opset_import if not entry.domain)
    if importlib.util.find_spec("onnxruntime") is None:
        note = f"opset {opset}; check skipped: onnxruntime is not installed ({INSTALL_HINT})"
        return FormatResult(path.name, None, note=note)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [
        torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0])
        for inputs in batches
    ]
    return _result(path, outputs, references, batches, f"opset {opset}; onnxruntime on the CPU")


def _check_torchscript(path: Path, model: RawInputModel, batches, references) -> FormatResult:
    loaded = _quietly(torch.jit.load, str(path))
    with torch.no_grad():
        outputs = [loaded(inputs) for inputs in batches]
    return _result(path, outputs, references, batches, "torch.jit.load")


def _result(path: Path, outputs, references, batches, note: str) -> FormatResult:
    difference = _max_abs_diff(outputs, references)
    scale = max([1.0] + [reference.abs().max().item() for reference in references])
    return FormatResult(
        path.name,
        difference,
        checked_batch_sizes=[len(inputs) for inputs in batches],
        tolerance=TOLERANCE * scale,
        matches=difference <= TOLERANCE * scale,
        note=note,
    )


def _quietly(function, *args):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        return function(*args)


CHECKS = {"safetensors": _check_safetensors, "onnx": _check_onnx, "torchscript": _check_torchscript}


def _manifest(
    model: RawInputModel,
    state: dict,
    path: Path,
    dtype: torch.dtype,
    ema: bool,
    results: dict[str, FormatResult],
) -> dict:
    info = model.info
    averaged = ema and state.get("ema") is not None
    return {
        "run_id": state.get("run_id"),
        "toolbox_version": toolbox.__version__,
        "checkpoint": path.name,
        "epoch": state["progress"]["epoch"],
        "weights": "moving average" if averaged else "trained",
        "arch": model.config.arch,
        "model": state["config"].get("model"),
        "dataset": model.config.dataset,
        "task": info.task,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", *info.input_shape],
            "dtype": str(dtype).removeprefix("torch."),
            "value_range": list(info.value_range) if info.value_range else None,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", info.num_outputs],
            "is": "logits (no softmax)" if info.task == "classification" else "predictions",
        },
        "normalisation": {"mean": list(info.mean), "std": list(info.std), "folded_in": True},
        "class_names": list(info.class_names),
        "formats": {name: asdict(result) for name, result in results.items()},
    }
