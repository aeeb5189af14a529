"""The one frozen TrainingConfig: selectors, general options and the component slots."""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from toolbox.callbacks import CALLBACKS, CallbackConfig
from toolbox.callbacks.device_stats import DeviceStats
from toolbox.callbacks.early_stopping import EarlyStopping
from toolbox.callbacks.grad_norm import GradNorm
from toolbox.callbacks.lr_finder import LRFinder
from toolbox.callbacks.profiler import Profiler
from toolbox.component import fixed_on_resume, free_on_resume
from toolbox.criteria import CRITERIA, CriterionConfig
from toolbox.criteria.cross_entropy import CrossEntropy
from toolbox.datasets import DATASETS, DatasetConfig
from toolbox.datasets.digits import Digits
from toolbox.errors import UserError
from toolbox.loggers import LOGGERS, LoggerConfig
from toolbox.loggers.mlflow import MLflow
from toolbox.loggers.wandb import Wandb
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

NO_LOGGER = "none"
"""The --loggers choice that selects no tracker (the run's own records are still written)."""

LoggerNames = Annotated[
    tuple[str, ...],
    tyro.conf.arg(
        constructor_factory=lambda: tuple[Literal[(NO_LOGGER, *LOGGERS.names())], ...],
        help_behavior_hint=_show_default,
    ),
]


CallbackNames = Annotated[
    tuple[str, ...],
    tyro.conf.arg(
        constructor_factory=lambda: tuple[Literal[tuple(CALLBACKS.names())], ...],
        help_behavior_hint=_show_default,
    ),
]


@dataclass(frozen=True)
class CallbackOptions:
    """The callbacks' options; each group applies when --callbacks names its callback."""

    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    grad_norm: GradNorm = field(default_factory=GradNorm)
    profiler: Profiler = field(default_factory=Profiler)
    lr_finder: LRFinder = field(default_factory=LRFinder)
    device_stats: DeviceStats = field(default_factory=DeviceStats)


@functools.cache
def _options_class(extra: tuple[str, ...]) -> type[CallbackOptions]:
    if not extra:
        return CallbackOptions
    groups = [
        (name, CALLBACKS.get(name), field(default_factory=CALLBACKS.get(name))) for name in extra
    ]
    return dataclasses.make_dataclass(
        "CallbackOptions", groups, bases=(CallbackOptions,), frozen=True
    )


def callback_options_class() -> type[CallbackOptions]:
    """CallbackOptions with a group for every callback registered by now: the built-in
    ones and those of the plugins imported (so that their options are flags and load back
    from config.json like the built-in ones')."""
    built_in = {f.name for f in dataclasses.fields(CallbackOptions)}
    return _options_class(tuple(name for name in CALLBACKS.names() if name not in built_in))


@dataclass(frozen=True)
class LoggerOptions:
    """The options of the loggers that have some; each applies when --loggers names it."""

    mlflow: MLflow = field(default_factory=MLflow)
    wandb: Wandb = field(default_factory=Wandb)


# Component slots and the selector field that names each one's registered class.
SLOTS: dict[str, tuple[str, Registry]] = {
    "model": ("arch", MODELS),
    "data": ("dataset", DATASETS),
    "optim": ("optimizer", OPTIMIZERS),
    "sched": ("scheduler", SCHEDULERS),
    "loss": ("criterion", CRITERIA),
}


DEFAULT_EPOCHS = 20
"""The epochs a run trains for when neither --epochs nor --max-steps is given."""

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class TrainingConfig:
    """Train a model. Pick components with the selectors; their options follow in groups.
    --sweep KEY=V1,V2 (repeatable, e.g. --sweep optim.lr=0.1,0.01 --sweep seed=0,1) trains
    every combination into <output-dir>/<run-name>/ and writes summary.csv; --sweep-workers N
    trains N at once, each in its own process with cores // N threads (OMP_NUM_THREADS), and
    --sweep-devices 0,1 one per GPU (CUDA_VISIBLE_DEVICES). --search optuna --search-trials N
    --search-space KEY=log:LOW:HIGH|float:LOW:HIGH|int:LOW:HIGH|cat:A,B ... --run-name NAME
    searches with Optuna (--search-sampler tpe|random|grid, --search-pruner none|median|halving
    on --monitor, --search-storage URL, default sqlite:///<output-dir>/<run-name>/study.db,
    shared by every process started so; --search-heartbeat S; --search-summary)."""

    arch: Annotated[str, _selector(MODELS)] = fixed_on_resume("mlp")
    """Model architecture; its options are listed under --model.* (see --arch NAME --help)."""
    dataset: Annotated[str, _selector(DATASETS)] = fixed_on_resume("digits")
    """Dataset; its options are listed under --data.*."""
    optimizer: Annotated[str, _selector(OPTIMIZERS)] = fixed_on_resume("adamw")
    """Optimizer; its options are listed under --optim.*."""
    scheduler: Annotated[str, _selector(SCHEDULERS)] = fixed_on_resume("cosine")
    """Learning-rate schedule; its options are listed under --sched.*."""
    criterion: Annotated[str, _selector(CRITERIA)] = fixed_on_resume("cross_entropy")
    """Training loss; its options are listed under --loss.*."""
    metrics: MetricNames = fixed_on_resume(("accuracy",))
    """Metrics computed on every evaluation, over the whole split."""

    epochs: int | None = None
    """Total number of epochs (None: 20, or as many as --max-steps needs; on resume: the new
    total, counting the epochs already done)."""
    max_steps: int = 0
    """Train this many optimizer steps instead of --epochs (0: train --epochs); schedules
    run over these steps, and the last one evaluates and saves."""
    batch_size: int = 64
    """Training batch size, in samples per forward pass of one process (under torchrun the
    global batch is this times the number of processes)."""
    eval_batch_size: int = 512
    """Evaluation batch size, in samples."""
    grad_accum: int = 1
    """Batches whose gradients are summed into one optimizer step."""
    clip_grad: float | None = None
    """Clip the gradients' global L2 norm to this value before each step (None: no clipping)."""
    ema_decay: float | None = fixed_on_resume(None)
    """Evaluate, sample from and test an exponential moving average of the weights, updated
    after each optimizer step with this decay (e.g. 0.999, about the last 1000 steps; None:
    the trained weights)."""
    seed: int = fixed_on_resume(0)
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
    """Worker processes for datasets served through a DataLoader (--data.loader dataloader or
    stream)."""
    eval_every: int = 1
    """Epochs between two evaluations on the validation split (the last epoch always is)."""
    eval_every_steps: int = 0
    """Evaluate every this many optimizer steps instead, mid-epoch too (0: per --eval-every);
    each row's step column says where."""
    limit_train_batches: int = 0
    """Train on at most this many batches per epoch (0: all); for a quick smoke test."""
    limit_val_batches: int = 0
    """Evaluate on at most this many validation batches (0: all)."""
    fast_dev_run: bool = False
    """A smoke test of a new model: one epoch of two training batches and one validation
    batch (as --epochs 1 --limit-train-batches 2 --limit-val-batches 1)."""
    train_metrics: bool = True
    """Also score --metrics on the training batches (train_<metric> columns, moving averages
    on the console): on the device, one host sync per --log-every interval."""
    histogram_every: int = 10
    """Epochs between two TensorBoard histograms of the weights and gradients (0: never)."""
    loggers: LoggerNames = free_on_resume(("tensorboard",))
    """Trackers the run also writes to (none: no tracker); metrics.csv, training.log,
    run.json and curves.png are written whatever they are."""
    logger: LoggerOptions = free_on_resume(default_factory=LoggerOptions)
    """The trackers' options (--logger.mlflow.*, --logger.wandb.*)."""
    callbacks: CallbackNames = free_on_resume(())
    """Callbacks run at the moments of fit(), in this order (early_stopping, grad_norm,
    profiler, lr_finder, device_stats, or a plugin's); their state is checkpointed."""
    callback: CallbackOptions = free_on_resume(default_factory=lambda: callback_options_class()())
    """The callbacks' options (--callback.<name>.*), used when --callbacks names them."""
    notes: str = free_on_resume("")
    """A note on the run, in run.json and the trackers (MLflow's description, W&B's notes)."""
    tags: tuple[str, ...] = free_on_resume(())
    """Labels of the run (e.g. baseline lr-sweep): in run.json, the trackers and the runs
    table (python -m toolbox runs --tag baseline)."""
    log_every: int = 50
    """Optimizer steps between two progress updates of the loss (each costs one host sync)."""
    monitor: str = fixed_on_resume("val_loss")
    """Metric that picks model_best.pth.tar: val_loss or val_<metric> (min or max follows)."""

    checkpoint_every_steps: int = 0
    """Also write checkpoint.pth.tar every this many optimizer steps (0: at epoch ends only)."""
    keep_last: int = 0
    """Keep the newest this many per-epoch checkpoints, checkpoint_e<N>.pth.tar (0: none)."""
    save_at: tuple[int, ...] = ()
    """Epochs whose checkpoint_e<N>.pth.tar is kept for good, whatever --keep-last says."""
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
    plugins: tuple[str, ...] = free_on_resume(())
    """Modules (my_project.models) or .py files imported first, whose components then are
    choices like the toolbox's own (repeatable); recorded, so that --resume, test.py and
    --config import them again. Installed packages listing a module in the toolbox.plugins
    entry-point group need no flag."""

    output_dir: Path = fixed_on_resume(Path("outputs"))
    """Directory that holds one sub-directory per run."""
    run_name: str | None = fixed_on_resume(None)
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

    def __post_init__(self) -> None:
        for slot in SLOTS:
            _agree(self, slot)

    @property
    def logger_configs(self) -> list[LoggerConfig]:
        """The configs of the loggers --loggers names, with their --logger.<name>.* options."""
        return [
            getattr(self.logger, name) if hasattr(self.logger, name) else LOGGERS.get(name)()
            for name in self.loggers
            if name != NO_LOGGER
        ]

    @property
    def callback_configs(self) -> dict[str, CallbackConfig]:
        """The configs of the callbacks --callbacks names, with their --callback.<name>.*
        options, by name in the order given."""
        return {name: getattr(self.callback, name) for name in self.callbacks}

    @property
    def planned_epochs(self) -> int | None:
        """The epochs the run trains for: --epochs, 1 for --fast-dev-run, 20 by default, or
        None with --max-steps (the trainer derives them from the steps per epoch)."""
        if self.fast_dev_run:
            return 1
        if self.epochs is not None:
            return self.epochs
        return None if self.max_steps else DEFAULT_EPOCHS

    @property
    def train_batch_limit(self) -> int:
        """Training batches per epoch at most (0: all)."""
        return 2 if self.fast_dev_run else self.limit_train_batches

    @property
    def val_batch_limit(self) -> int:
        """Validation batches per evaluation at most (0: all)."""
        return 1 if self.fast_dev_run else self.limit_val_batches

    @property
    def monitor_mode(self) -> Literal["min", "max"]:
        """Whether a lower ("min") or higher ("max") value of the monitored metric is better."""
        if self.monitor == "val_loss":
            return "min"
        metric = METRICS.get(self.monitor.removeprefix("val_"))
        return "max" if metric.higher_is_better else "min"


def _agree(config: TrainingConfig, slot: str) -> None:
    """Makes ``slot``'s selector and component name the same component, so that a run trains
    what it records and its config.json loads back: a selector given alone (``arch="cnn"``)
    gets its component at its defaults, a component given alone (``model=CNN()``) sets its
    selector, and the model's ``default_metrics`` replace the default --metrics as
    with_components does. A selector and a component that disagree are refused."""
    selector, registry = SLOTS[slot]
    name, component = getattr(config, selector), getattr(config, slot)
    registered = vars(type(component)).get("registered_name")  # None: not itself registered
    if registered == name and isinstance(component, registry.base):
        return  # the usual case, decided without importing the registry's modules
    defaults = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    name_given = name != defaults[selector].default
    component_given = component != defaults[slot].default_factory()
    known = (
        registered is not None
        and isinstance(component, registry.base)
        and registered in registry
        and registry.get(registered) is type(component)
    )
    if name_given and not component_given:
        component = registry.get(name)()  # an unknown name fails here, listing the valid ones
        object.__setattr__(config, slot, component)  # frozen: set once, while being made
    elif not known:
        raise UserError(
            f"TrainingConfig: {slot} is a {type(component).__name__}, which is not a "
            f"registered {registry.kind} ({registry.option} cannot name it, and its run's "
            f"config.json would not load back); register its class, or give {selector} alone."
        )
    elif component_given and not name_given:
        object.__setattr__(config, selector, registered)
    else:
        raise UserError(
            f"TrainingConfig: {selector} is {name!r} but {slot} is a "
            f"{type(component).__name__} ({registry.option} {registered}); give {selector} "
            f"alone (its {registry.kind} with default options), {slot} alone, or both naming "
            "the same one."
        )
    if (
        slot == "model"
        and component.default_metrics is not None
        and config.metrics == defaults["metrics"].default
    ):
        object.__setattr__(config, "metrics", component.default_metrics)


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
