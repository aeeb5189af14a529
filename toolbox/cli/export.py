"""``python -m toolbox export RUN``: a trained run's model as safetensors, ONNX and TorchScript
files under ``<run>/export/``, checked against torch (toolbox/training/export.py does it).

torch-free at import: the options are read, and the packages each format needs found, before
torch loads, so a mistake is reported at once."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from toolbox.errors import ArgumentParser, UserError

FORMATS = ("safetensors", "onnx", "torchscript")
"""The formats, in the order they are written (toolbox.training.export.FILES names files)."""
NEEDS = {"safetensors": ("safetensors",), "onnx": ("onnx", "onnxscript"), "torchscript": ()}
"""The packages each format's writer imports: the optional extra ``export``."""

DESCRIPTION = """\
Export a trained run's model to <run>/export/: model.safetensors (the weights, the
normalisation buffers mean and inv_std included), model.onnx (for onnxruntime and other ONNX
runtimes), model.torchscript.pt (torch.jit.load, without the toolbox) and model.json (input
shape, dtype and range, output, class names, normalisation, run id and, per format, the
largest difference from torch's outputs on a check batch). The models take raw inputs as the
dataset stores them (uint8 images (N, C, H, W), float32 features), normalise them inside,
give logits (classification) or predictions (regression), and take any batch size."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m toolbox export",
        description=DESCRIPTION,
        add_help=True,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run", type=Path, metavar="RUN", help="a run directory (outputs/<run>) or its checkpoint"
    )
    parser.add_argument(
        "--format",
        nargs="+",
        choices=FORMATS,
        default=list(FORMATS),
        metavar="FORMAT",
        help=f"any of {', '.join(FORMATS)} (default: all three)",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="which checkpoint of a run directory: model_best.pth.tar or checkpoint.pth.tar",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export the moving average of the weights of a run trained with --ema-decay "
        "(--no-ema: the trained weights)",
    )
    parser.add_argument(
        "--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="samples in the check batch, at least 2 (a batch of 1 is checked too)",
    )
    parser.add_argument(
        "--check-inputs",
        choices=("val", "random"),
        default="val",
        help="what the check batch holds: the run's validation samples (random values in "
        "the inputs' range if its dataset cannot be built), or random values at once",
    )
    return parser


def export_main(argv: list[str]) -> int:
    options = build_parser().parse_args(argv)
    formats = [name for name in FORMATS if name in options.format]  # once each, in order
    if options.batch_size < 2:
        raise UserError(f"--batch-size is {options.batch_size}; it must be at least 2.")
    needed = sorted({package for name in formats for package in NEEDS[name]})
    missing = [package for package in needed if importlib.util.find_spec(package) is None]
    if missing:
        raise UserError(
            f"--format {' '.join(formats)} needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: install the optional extra "
            "with `uv sync --extra export`."
        )
    from toolbox.training.export import export_run

    export = export_run(
        options.run,
        formats,
        checkpoint=options.checkpoint,
        ema=options.ema,
        opset=options.opset,
        batch_size=options.batch_size,
        random_inputs=options.check_inputs == "random",
        progress=print,
    )
    _report(export)
    return 0


def _report(export) -> None:
    """One line per format: its file and how far it was from torch."""
    from toolbox.cli.console import print_stderr

    manifest = export.manifest
    print(
        f"{manifest['arch']} from {manifest['checkpoint']} (epoch {manifest['epoch']}, "
        f"{manifest['weights']} weights), inputs {manifest['input']['dtype']} "
        f"{manifest['input']['shape']}; checked against torch on {manifest['check_inputs']}, "
        "and on a batch of 1"
    )
    for name, result in export.results.items():
        path = export.directory / result.file
        if result.max_abs_diff is None:
            print(f"  {name:<12} {path}  ({result.note})")
            continue
        print(f"  {name:<12} {path}  max |{name} - torch| = {result.max_abs_diff:.3g}")
        if not result.matches:
            print_stderr(
                f"{name} differs from torch by more than {result.tolerance:.3g}: check it "
                "before relying on it.",
                style="bold yellow",
            )
    print(f"  {'model.json':<12} {export.directory / 'model.json'}")
