"""A run's parts, built from its config in the order that keeps runs repeatable (the seeded
streams are drawn from in the same order every time); everything that can fail on user
input fails here, before the run directory exists."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toolbox.config.training import TrainingConfig
from toolbox.data.augment import BatchAugment
from toolbox.data.loaders import Normalizer, make_loader
from toolbox.errors import UserError
from toolbox.metrics import METRICS, MetricConfig
from toolbox.models.steps import has_manual_optimization, has_own_steps
from toolbox.optimizers import ParameterSet
from toolbox.records import checkpoint
from toolbox.training.averaging import WeightAverage
from toolbox.training.distributed import Distributed
from toolbox.training.runtime import build_model, input_normalizer, resolve_device, seed_everything
from toolbox.training.state import MAIN_OPTIMIZER, RunState, ScheduledOptimizer


@dataclass
class Parts:
    """What the run is built from besides its checkpointed state."""

    device: torch.device
    splits: object
    """The dataset's splits (train, val, test) and its DatasetInfo."""
    criterion: torch.nn.Module
    metrics: dict[str, MetricConfig]
    normalizer: Normalizer
    val_loader: object
    skipped_init_keys: list[str]
    """The --init-from keys left out (their shapes differ, e.g. a new classifier head)."""
    notes: list[str] = field(default_factory=list)
    """What the run's log says about how it was built (the --model.weights loaded)."""


def build_run(
    config: TrainingConfig, dist: Distributed, *, resumed: dict | None = None
) -> tuple[RunState, Parts]:
    """The run's state, as a new run starts it (--model.weights and --init-from apply; a
    resume, given its checkpoint ``resumed``, then restores the state), and its other parts."""
    fresh = resumed is None
    if dist.is_main:  # the rank that will write to the trackers
        # A resumed run lives where its checkpoint is; a new one goes under --output-dir.
        runs_dir = Path(config.resume).parent.parent if config.resume else config.output_dir
        for logger in config.logger_configs:
            logger.check(runs_dir)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    seed_everything(config.seed)
    device = resolve_device(dist.device or config.device)
    splits = config.data.build()
    model = _model(config, splits.info, device, dist)
    pretrained_keys, notes = _pretrained(config.model, model, resumed)
    if dist.rank > 0:
        # Every rank built the same initial weights; from here on each draws its own
        # dropout masks and noise. Rank 0 keeps the single-process stream.
        seed_everything(config.seed + dist.rank)
    skipped_init_keys: list[str] = []
    if config.init_from is not None and fresh:
        skipped_init_keys = checkpoint.load_model_state(
            model,
            checkpoint.load_weights(config.init_from),
            f"--init-from {config.init_from}",
            strict=False,
        )
    # Before a resume restores the average: a new run's average starts at the weights.
    ema = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    criterion = config.loss.build().to(device)
    metrics = {name: METRICS.get(name)() for name in config.metrics}
    normalizer = input_normalizer(config, splits.info, device)
    augment = _augment(config, splits.info, device, dist)
    train_loader, val_loader = _loaders(config, splits, device, dist)
    if config.train_batch_limit or config.val_batch_limit:
        notes.append(
            f"limited to {len(train_loader)} training batches per epoch and "
            f"{len(val_loader)} validation batches per evaluation"
            + (" (--fast-dev-run)" if config.fast_dev_run else "")
        )
    steps_per_epoch, epochs, total_steps = run_length(config, len(train_loader))
    optimizers = {
        name: _scheduled_optimizer(config, trained, optim, sched, steps_per_epoch, total_steps)
        for name, (trained, optim, sched) in _declared_optimizers(config, model).items()
    }
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    state = RunState(
        config,
        dist,
        model=model,
        ema=ema,
        optimizers=optimizers,
        manual=has_manual_optimization(model),
        scaler=scaler,
        train_loader=train_loader,
        augment=augment,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        total_steps=total_steps,
        data_info=splits.info,
        pretrained_keys=pretrained_keys,
    )
    parts = Parts(
        device, splits, criterion, metrics, normalizer, val_loader, skipped_init_keys, notes
    )
    return state, parts


def _declared_optimizers(config: TrainingConfig, model: torch.nn.Module) -> dict[str, tuple]:
    """(what it trains, optimizer config, scheduler config) by name: the run's one optimizer
    over the model, or those a model that drives its own declares (with the run's --optim
    and --sched where it gives none), each over its ParameterSet."""
    if not has_manual_optimization(model):
        return {MAIN_OPTIMIZER: (model, config.optim, config.sched)}
    refused = {
        "--nan-policy skip": config.nan_policy == "skip",  # it cannot undo the model's steps
        "--compile": config.compile,  # the steps' own backward passes would break its graph
    }
    for flag, given in refused.items():
        if given:
            raise UserError(
                f"{flag} is not available for --arch {config.model.registered_name}, which "
                "drives its own optimizers (configure_optimizers): its training step calls "
                f"backward and steps them itself. Drop {flag}."
            )
    declared = model.configure_optimizers()
    if not has_own_steps(model) or not declared:
        raise UserError(
            f"--arch {config.model.registered_name}: configure_optimizers() needs a model "
            "with its own steps (training_step, evaluation_step, loss_names) and must name "
            "at least one NamedOptimizer."
        )
    owners: dict[int, str] = {}
    found = {}
    for name, named in declared.items():
        parameters = [p for p in named.parameters if p.requires_grad]
        for parameter in parameters:
            if owners.setdefault(id(parameter), name) != name:
                raise UserError(
                    f"--arch {config.model.registered_name}: the optimizers "
                    f"{owners[id(parameter)]!r} and {name!r} share parameters; give each "
                    "optimizer its own (a parameter steps once per training step)."
                )
        if not parameters:
            raise UserError(
                f"--arch {config.model.registered_name}: the optimizer {name!r} has no "
                "parameter that requires gradients; give it some, or leave it out."
            )
        optim, sched = named.optim or config.optim, named.sched or config.sched
        found[name] = (ParameterSet(parameters), optim, sched)
    return found


def _scheduled_optimizer(
    config: TrainingConfig, trained, optim, sched, steps_per_epoch: int, total_steps: int
) -> ScheduledOptimizer:
    optimizer = optim.build(trained)
    scheduler = sched.build(optimizer, steps_per_epoch, total_steps, config.monitor_mode)
    return ScheduledOptimizer(optimizer, scheduler, optim, sched, list(trained.parameters()))


def run_length(config: TrainingConfig, batches_per_epoch: int) -> tuple[int, int, int]:
    """The optimizer steps per epoch, the epochs and the optimizer steps of the whole run:
    --epochs, or as many epochs as --max-steps takes (the last one cut short)."""
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    epochs = config.planned_epochs
    if epochs is None:
        return steps_per_epoch, math.ceil(config.max_steps / steps_per_epoch), config.max_steps
    return steps_per_epoch, epochs, steps_per_epoch * epochs


def _pretrained(model_config, model: torch.nn.Module, resumed: dict | None):
    """Loads --model.weights into a new run's model, freezes its backbone for --model.freeze
    backbone, and marks the loaded parameters with --model.pretrained-lr-scale for the
    optimizer's groups. Returns the loaded keys (a resume reads them from its checkpoint, so
    its optimizer has the same groups) and what to log."""
    loaded: list[str] = []
    notes: list[str] = []
    if model_config.weights and resumed is not None:
        loaded = list(resumed.get("pretrained_keys") or [])
    elif model_config.weights:
        source = f"--model.weights {model_config.weights}"
        weights = _weights_of(model_config)
        own = model.state_dict()
        skipped = checkpoint.load_model_state(model, weights, source, strict=False)
        loaded = sorted(own.keys() - set(skipped))
        if not loaded:
            raise UserError(
                f"{source}: none of the {len(own)} tensors of --arch "
                f"{model_config.registered_name} fits it (are they another architecture's "
                "weights?); give weights of this architecture (--init-from loads a run's "
                "weights too, into whichever tensors fit)."
            )
        shown = ", ".join(skipped) if skipped else "none"
        notes.append(
            f"{source}: loaded {len(loaded)} of {len(own)} tensors; skipped (shape differs "
            f"or absent): {shown}"
        )
    if model_config.pretrained_lr_scale != 1.0:
        names = set(loaded)
        for name, param in model.named_parameters():
            if name in names:
                param.lr_scale = model_config.pretrained_lr_scale  # read by param_groups
    if model_config.freeze == "backbone":
        head = model_config.head_prefix(model)
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(f"{head}.")
        notes.append(f"--model.freeze backbone: training {head} only")
    return loaded, notes


def _weights_of(model_config) -> dict[str, torch.Tensor]:
    """The state_dict --model.weights names: a file, or the model's named weights."""
    name = model_config.weights
    path = Path(name).expanduser()
    if path.exists() or "/" in name or path.suffix:
        if not path.is_file():
            raise UserError(f"--model.weights {name} does not exist; give a weights file.")
        return checkpoint.load_weights(path)
    named = model_config.named_weights(name)
    if named is None:
        raise UserError(
            f"--model.weights {name} is not a file, and --arch {model_config.registered_name} "
            "has no named weights; give the path of a state_dict or a toolbox checkpoint."
        )
    return named


def _model(config: TrainingConfig, info, device: torch.device, dist: Distributed):
    model = build_model(config, info, device)
    if config.sync_bn:
        if dist.enabled and device.type != "cuda":
            raise UserError(
                "--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on "
                f"{device.type}); drop --sync-bn, or train on GPUs."
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _augment(config: TrainingConfig, info, device: torch.device, dist: Distributed):
    if config.data.augment == "none" or config.data.loader == "stream":
        return None  # streamed images are augmented one by one where they are decoded
    if len(info.input_shape) != 3:
        raise UserError(
            f"--data.augment {config.data.augment} needs image inputs (C, H, W), but this "
            f"dataset's inputs have shape {tuple(info.input_shape)}; use --data.augment none."
        )
    # Each rank's own stream, seeded apart from the model's.
    return BatchAugment(config.data.augment, device, config.seed + 1 + dist.rank)


def _loaders(config: TrainingConfig, splits, device: torch.device, dist: Distributed):
    """The training loader (each rank its shard of a shared permutation) and the
    validation one (each rank its share of the split)."""
    train_loader, val_loader = (
        make_loader(
            split,
            batch_size,
            kind=config.data.loader,
            device=device,
            train=train,
            seed=config.seed,
            num_workers=config.num_workers,
            placement=config.data.placement,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        for split, batch_size, train in (
            (splits.train, config.batch_size, True),
            (splits.val, config.eval_batch_size, False),
        )
    )
    train_loader.batch_limit = config.train_batch_limit
    val_loader.batch_limit = config.val_batch_limit
    if len(train_loader) == 0:
        processes = f" times {dist.world_size} processes" if dist.enabled else ""
        raise UserError(
            f"--batch-size {config.batch_size}{processes} is larger than the training split "
            f"({splits.count('train')} samples), so an epoch has no full batch; lower "
            "--batch-size."
        )
    if splits.count("val") == 0:
        raise UserError(
            f"the validation split of {config.dataset!r} is empty; raise --data.val-fraction "
            "(e.g. 0.1)."
        )
    return train_loader, val_loader
