"""The one frozen TrainingConfig, its JSON form, and the checks run before anything is built."""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tyro

from toolbox.criteria import CRITERIA, CriterionConfig
from toolbox.criteria.cross_entropy import CrossEntropy
from toolbox.datasets import DATASETS, DatasetConfig
from toolbox.datasets.digits import Digits
from toolbox.errors import UserError
from toolbox.metrics import METRICS
from toolbox.models import MODELS, ModelConfig
from toolbox.models.mlp import MLP
from toolbox.optimizers import OPTIMIZERS, OptimizerConfig
from toolbox.optimizers.adam import AdamW
from toolbox.registry import Registry
from toolbox.schedulers import SCHEDULERS, SchedulerConfig
from toolbox.schedulers.schedules import Cosine


def _show_default(shown: str) -> str:
    """tyro renders a constructor_factory default as "['mlp']"; show it as typed: mlp."""
    try:
        value = ast.literal_eval(shown)
    except (ValueError, SyntaxError):
        return f"(default: {shown})"
    return f"(default: {' '.join(map(str, value)) if isinstance(value, list) else value})"


def _selector(registry: Registry) -> Any:
    """A str field whose choices are read from the registry when the parser is built."""
    return tyro.conf.arg(
        constructor_factory=lambda: Literal[tuple(registry.names())],
        help_behavior_hint=_show_default,
    )


MetricNames = Annotated[
    tuple[str, ...],
    tyro.conf.arg(
        constructor_factory=lambda: tuple[Literal[tuple(METRICS.names())], ...],
        help_behavior_hint=_show_default,
    ),
]

# Component slots and the selector field that names each one's registered class.
SLOTS: dict[str, tuple[str, Registry]] = {
    "model": ("arch", MODELS),
    "data": ("dataset", DATASETS),
    "optim": ("optimizer", OPTIMIZERS),
    "sched": ("scheduler", SCHEDULERS),
    "loss": ("criterion", CRITERIA),
}

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class TrainingConfig:
    """Train a model. Pick components with the selectors; their options follow in groups.
    --sweep KEY=V1,V2 (repeatable, e.g. --sweep optim.lr=0.1,0.01 --sweep seed=0,1) trains
    every combination into <output-dir>/<run-name>/ and writes summary.csv."""

    arch: Annotated[str, _selector(MODELS)] = "mlp"
    """Model architecture; its options are listed under --model.* (see --arch NAME --help)."""
    dataset: Annotated[str, _selector(DATASETS)] = "digits"
    """Dataset; its options are listed under --data.*."""
    optimizer: Annotated[str, _selector(OPTIMIZERS)] = "adamw"
    """Optimizer; its options are listed under --optim.*."""
    scheduler: Annotated[str, _selector(SCHEDULERS)] = "cosine"
    """Learning-rate schedule; its options are listed under --sched.*."""
    criterion: Annotated[str, _selector(CRITERIA)] = "cross_entropy"
    """Training loss; its options are listed under --loss.*."""
    metrics: MetricNames = ("accuracy",)
    """Metrics computed on every evaluation, over the whole split."""

    epochs: int = 20
    """Total number of epochs (on resume: the new total, counting the epochs already done)."""
    batch_size: int = 64
    """Training batch size, in samples per forward pass of one process (under torchrun the
    global batch is this times the number of processes)."""
    eval_batch_size: int = 512
    """Evaluation batch size, in samples."""
    grad_accum: int = 1
    """Batches whose gradients are summed into one optimizer step."""
    clip_grad: float | None = None
    """Clip the gradients' global L2 norm to this value before each step (None: no clipping)."""
    ema_decay: float | None = None
    """Evaluate, sample from and test an exponential moving average of the weights, updated
    after each optimizer step with this decay (e.g. 0.999, about the last 1000 steps; None:
    the trained weights)."""
    seed: int = 0
    """Seed of python, numpy and torch random number generators."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of forward passes; fp16 also scales the loss."""
    compile: bool = False
    """Compile the model with torch.compile (the first step's compile time is logged apart)."""
    channels_last: bool = False
    """Keep image batches and conv weights channels-last (faster convolutions on recent GPUs)."""
    num_workers: int = 0
    """Worker processes for datasets served through a DataLoader (--data.loader dataloader)."""
    eval_every: int = 1
    """Epochs between two evaluations on the validation split (the last epoch always is)."""
    histogram_every: int = 10
    """Epochs between two TensorBoard histograms of the weights and gradients (0: never)."""
    log_every: int = 50
    """Optimizer steps between two progress updates of the loss (each costs one host sync)."""
    monitor: str = "val_loss"
    """Metric that picks model_best.pth.tar: val_loss or val_<metric> (min or max follows)."""

    checkpoint_every_steps: int = 0
    """Also write checkpoint.pth.tar every this many optimizer steps (0: at epoch ends only)."""
    keep_last: int = 0
    """Keep the newest this many per-epoch checkpoints, checkpoint_e<N>.pth.tar (0: none)."""
    save_at: tuple[int, ...] = ()
    """Epochs whose checkpoint_e<N>.pth.tar is kept for good, whatever --keep-last says."""
    early_stop_patience: int = 0
    """Stop after this many evaluations without improvement of --monitor (0: never)."""
    early_stop_lr: float = 0.0
    """Stop when the learning rate falls below this value (0: never)."""
    nan_policy: Literal["abort", "skip"] = "abort"
    """On a non-finite loss: abort, keeping the last good checkpoint; or skip that batch."""
    max_nan_skips: int = 10
    """With --nan-policy skip: abort once this many batches were skipped in the run."""
    deterministic: bool = False
    """Use deterministic algorithms only (bit-exact reruns on GPUs too; some ops are slower)."""
    sync_bn: bool = False
    """Under torchrun, turn batch norms into SyncBatchNorm: statistics over every rank's batch
    (CUDA only)."""
    dist_timeout: float = 600.0
    """Under torchrun, seconds a rank waits for the others at a collective before the job
    ends with an error (a rank that died or hangs)."""
    init_from: Path | None = None
    """Weights to start from (checkpoint or state_dict); keys of another shape are skipped."""

    output_dir: Path = Path("outputs")
    """Directory that holds one sub-directory per run."""
    run_name: str | None = None
    """Name of the run's directory (None: the start time as YYMMDD_HHMMSS)."""
    resume: Path | None = None
    """checkpoint.pth.tar of a run to continue; its config is restored, flags override it.
    auto: continue <output-dir>/<run-name> from its checkpoint if it has one, else start it
    (so a restarted job, e.g. torchrun --max-restarts, picks up where it stopped)."""

    model: ModelConfig = field(default_factory=MLP)
    data: DatasetConfig = field(default_factory=Digits)
    optim: OptimizerConfig = field(default_factory=AdamW)
    sched: SchedulerConfig = field(default_factory=Cosine)
    loss: CriterionConfig = field(default_factory=CrossEntropy)

    @property
    def monitor_mode(self) -> Literal["min", "max"]:
        """Whether a lower ("min") or higher ("max") value of the monitored metric is better."""
        if self.monitor == "val_loss":
            return "min"
        metric = METRICS.get(self.monitor.removeprefix("val_"))
        return "max" if metric.higher_is_better else "min"


def with_components(config: TrainingConfig, **names: str) -> TrainingConfig:
    """``config`` with the named selectors changed and each changed slot at its defaults."""
    changes: dict[str, Any] = {}
    for slot, (selector, registry) in SLOTS.items():
        name = names.get(selector)
        if name is not None and name != getattr(config, selector):
            changes[selector] = name
            changes[slot] = registry.get(name)()
            if slot == "model" and changes[slot].default_metrics is not None:
                changes["metrics"] = changes[slot].default_metrics
    return dataclasses.replace(config, **changes)


def problems(config: TrainingConfig) -> list[str]:
    """Every problem with ``config``, each naming the option, its value and the fix."""
    found = []
    counts = {
        1: ("epochs", "batch_size", "eval_batch_size", "grad_accum", "eval_every", "log_every"),
        0: (
            "num_workers",
            "checkpoint_every_steps",
            "keep_last",
            "max_nan_skips",
            "early_stop_patience",
            "histogram_every",
        ),
    }
    for minimum, names in counts.items():
        for name in names:
            value = getattr(config, name)
            if value < minimum:
                bound = "at least 1" if minimum else "0 or more"
                found.append(f"--{name.replace('_', '-')} is {value}; it must be {bound}.")
    # Chained comparisons also catch nan. The timeout becomes a timedelta under torchrun,
    # which overflows past 999,999,999 days; an infinite --early-stop-lr stops every run at
    # its first check.
    longest_timeout = timedelta.max.total_seconds()
    if not 0 < config.dist_timeout <= longest_timeout:
        found.append(
            f"--dist-timeout is {config.dist_timeout}; give a positive number of seconds up to "
            f"{longest_timeout:.3g} (e.g. 600)."
        )
    if not 0 <= config.early_stop_lr < math.inf:
        found.append(
            f"--early-stop-lr is {config.early_stop_lr}; it must be 0 (off) or a finite "
            "learning rate (e.g. 1e-6)."
        )
    if any(epoch < 1 for epoch in config.save_at):
        found.append(f"--save-at is {' '.join(map(str, config.save_at))}; epochs count from 1.")

    if not 0 <= config.seed < 2**32:
        found.append(f"--seed is {config.seed}; it must be in [0, 2**32) (numpy's range).")
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        found.append(
            f"--ema-decay is {config.ema_decay}; give a decay in (0, 1), e.g. 0.999 (an average "
            "over about the last 1000 steps), or None for no average."
        )
    if config.clip_grad is not None and not 0 < config.clip_grad < math.inf:
        found.append(
            f"--clip-grad is {config.clip_grad}; give a positive, finite norm (e.g. 1.0), or "
            "None for no clipping."
        )
    if not DEVICE_PATTERN.fullmatch(config.device):
        found.append(
            f"--device is {config.device!r}; use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps."
        )
    if config.run_name is not None and (
        not config.run_name or "/" in config.run_name or config.run_name in (".", "..")
    ):
        found.append(f"--run-name is {config.run_name!r}; give a plain directory name (no '/').")
    for slot in SLOTS:
        found.extend(getattr(config, slot).problems())

    task = config.data.task
    if task not in config.loss.tasks and not config.model.own_steps:
        found.append(
            f"--criterion {config.criterion} does not apply to the {task} dataset "
            f"{config.dataset!r}; use one of: "
            + ", ".join(n for n in CRITERIA.names() if task in CRITERIA.get(n).tasks)
            + "."
        )
    for name in config.metrics:
        if task not in METRICS.get(name).tasks:
            found.append(
                f"--metrics {name} does not apply to the {task} dataset {config.dataset!r}; "
                "use some of: "
                + ", ".join(n for n in METRICS.names() if task in METRICS.get(n).tasks)
                + "."
            )
    if len(set(config.metrics)) != len(config.metrics):
        found.append(f"--metrics {' '.join(config.metrics)} names a metric twice.")
    allowed = ["val_loss"] + [f"val_{name}" for name in config.metrics]
    if config.monitor not in allowed:
        found.append(
            f"--monitor is {config.monitor!r}; it must be one of {', '.join(allowed)} "
            "(a metric must also be listed in --metrics)."
        )
    return found


def validate(config: TrainingConfig) -> None:
    found = problems(config)
    if found:
        raise UserError("Invalid configuration:\n  - " + "\n  - ".join(found))


# --- JSON form -------------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """A config as plain JSON values: dataclasses become dicts, tuples lists, paths strings."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def flat(plain: dict, prefix: str = "") -> dict[str, Any]:
    """A config's plain form with nested groups as dotted keys: {"optim.lr": 0.001, ...}."""
    flattened: dict[str, Any] = {}
    for key, value in plain.items():
        if isinstance(value, dict):
            flattened.update(flat(value, f"{prefix}{key}."))
        else:
            flattened[f"{prefix}{key}"] = value
    return flattened


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` read from JSON, converted to the field type ``hint`` (or an error)."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _convert(typing.get_args(hint)[0], value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(options[0], value, where)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, where) for item in value)
        if len(args) == len(value):
            return tuple(_convert(arg, item, where) for arg, item in zip(args, value, strict=True))
    elif origin is Literal and value in typing.get_args(hint):
        return value
    elif hint is Path and isinstance(value, str):
        return Path(value)
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint in (int, str, bool) and type(value) is hint:
        return value
    raise UserError(f"{where} is {value!r}, which is not a valid {_type_name(hint)}.")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _from_plain(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a JSON object, not {data!r}.")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UserError(
            f"{where} has unknown keys {unknown}; "
            f"{cls.__name__} takes: {', '.join(sorted(fields))}."
        )
    return cls(
        **{key: _convert(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    )


def from_plain(data: Any, source: str = "config") -> TrainingConfig:
    """The TrainingConfig that ``to_plain`` gave ``data``, checked key by key."""
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a JSON object, not {type(data).__name__}.")
    data = dict(data)
    slots = {}
    for slot, (selector, registry) in SLOTS.items():
        name = data.get(selector, getattr(TrainingConfig, selector))
        if not isinstance(name, str):
            raise UserError(f"{source}: {selector} is {name!r}; it must be a name (a string).")
        if name not in registry:
            raise UserError(f"{source}: {registry.unknown_message(name)}")
        slots[slot] = _from_plain(registry.get(name), data.pop(slot, {}), f"{source}: {slot}")
    return dataclasses.replace(_from_plain(TrainingConfig, data, source), **slots)


# --- Resume ----------------------------------------------------------------------------------

# What a resumed run cannot change: the model and data it was trained on, the optimizer and
# schedule whose states it carries, and what its records are keyed by.
FIXED_ON_RESUME = (
    "arch",
    "dataset",
    "optimizer",
    "scheduler",
    "criterion",
    "metrics",
    "monitor",
    "seed",
    "ema_decay",
    "output_dir",
    "run_name",
)
# Data options that may change on resume because they do not change which samples are seen.
DATA_OPTIONS_FREE_ON_RESUME = ("root", "download", "loader", "placement", "cache")


def resume_conflicts(saved: TrainingConfig, new: TrainingConfig) -> list[str]:
    """The options ``new`` changes that a resumed run must keep as ``saved`` had them."""
    before, after = to_plain(saved), to_plain(new)
    changed = [key for key in FIXED_ON_RESUME if before[key] != after[key]]
    free_model_options = type(saved.model).weightless_options
    for slot, free in (("model", free_model_options), ("data", DATA_OPTIONS_FREE_ON_RESUME)):
        if SLOTS[slot][0] in changed:
            continue  # another arch or dataset: its options differ as a matter of course
        for key in sorted(set(before[slot]) | set(after[slot])):
            if key not in free and before[slot].get(key) != after[slot].get(key):
                changed.append(f"{slot}.{key}")
    return changed
