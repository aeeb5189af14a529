"""Data-parallel training under torchrun: the process group, and the few collectives the
trainer needs (sums for exact metrics, agreement on stopping, per-rank state for
checkpoints). With one process every function here is a cheap local no-op."""

from __future__ import annotations

import gc
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from toolbox.errors import UserError
from toolbox.launch import launched_rank, launched_world_size

# torchrun sets these for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    """nccl or gloo; None for a single process (no process group)."""
    device: str | None = None
    """The device this rank trains on (its local GPU with CUDA); None: --device decides."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    # --- collectives (each is a no-op for one process) ------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduces ``tensor`` in place over all ranks (op: sum, max or min) and returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op.upper()))
        return tensor

    def agree_on_signal(self, received: int | None, device: torch.device) -> int | None:
        """The stop signal any rank received (the highest number if several), on every rank,
        so that all ranks stop after the same step."""
        if not self.enabled:
            return received
        flag = torch.tensor([received or 0], device=device)
        agreed = int(self.all_reduce(flag, "max").item())
        return agreed or None

    def all_ranks_true(self, value: bool, device: torch.device) -> bool:
        if not self.enabled:
            return value
        return bool(self.all_reduce(torch.tensor([int(value)], device=device), "min").item())

    def gather_to_main(self, value: object) -> list[object] | None:
        """Every rank's ``value`` (plain data and tensors) on rank 0, in rank order; None on
        the other ranks."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def broadcast_from_main(self, value: object) -> object:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def run_on_main(self, action: Callable[[], object]) -> object:
        """Runs ``action`` on rank 0 only and returns its result on every rank; a UserError
        it raises is raised on every rank, so no rank waits for one that gave up."""
        if not self.enabled:
            return action()
        result, error = None, None
        if self.is_main:
            try:
                result = action()
            except UserError as raised:
                error = raised
        result, message = self.broadcast_from_main((result, error and str(error)))
        if error is not None:
            raise error
        if message is not None:
            raise UserError(f"rank 0 stopped the run: {message}")
        return result

    def average_gradients(self, module: torch.nn.Module) -> None:
        """All-reduce the gradients by hand, when DDP's backward hook did not run (a
        --nan-policy skip dropped the batch that would have run it)."""
        if self.enabled:
            for parameter in module.parameters():
                if parameter.grad is not None:
                    self.all_reduce(parameter.grad).div_(self.world_size)

    def average_gradients_of(self, parameters: list[torch.nn.Parameter]) -> None:
        """Average the parameters' gradients over the ranks in one all-reduce (of their
        concatenation): one optimizer's, for a model that steps its own (no DDP there).
        Every rank must have gradients for the same parameters."""
        if not self.enabled:
            return
        grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
        if not grads:
            return
        flat = self.all_reduce(torch.cat([grad.reshape(-1) for grad in grads]))
        flat.div_(self.world_size)
        sizes = [grad.numel() for grad in grads]
        for grad, averaged in zip(grads, flat.split(sizes), strict=True):
            grad.copy_(averaged.view_as(grad))

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (e.g. batch-norm running statistics, which each rank updates
        from its own batches) to every rank, so that evaluations agree everywhere."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def wrap_in_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DDP, which all-reduces the gradients in backward. Each rank keeps its
    own buffers (batch-norm statistics) instead of receiving rank 0's at every forward:
    the trainer copies rank 0's to all before each evaluation (sync_buffers)."""
    from torch.nn.parallel import DistributedDataParallel

    # torch 2.12 renamed the option; its new name still syncs at start, which is harmless.
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    no_forward_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_forward_sync
    )


def is_communication_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank died or hung.
    NCCL raises DistError subclasses; gloo raises plain RuntimeErrors naming itself."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and "gloo" in str(error)
    )


def start(device_name: str, timeout_s: float) -> Distributed:
    """Joins the process group torchrun set up, if any, and returns this process's place
    and the device it must train on (its local GPU under torchrun with CUDA)."""
    world_size = launched_world_size()
    if world_size == 1:
        return Distributed()
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise UserError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} is not set; start "
            "distributed runs with torchrun (e.g. torchrun --nproc-per-node 2 train.py ...)."
        )
    rank, local_rank = launched_rank(), int(os.environ["LOCAL_RANK"])
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        if device_name != "cuda":
            raise UserError(
                f"--device is {device_name!r}, but under torchrun each process uses the GPU "
                "numbered by its LOCAL_RANK; pass --device cuda (or auto), and choose GPUs "
                "with CUDA_VISIBLE_DEVICES."
            )
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise UserError(
                f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on "
                f"this machine, but it has {torch.cuda.device_count()} usable CUDA device(s); "
                "lower --nproc-per-node or use --device cpu."
            )
        device_name = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    elif device_name == "cpu":
        backend = "gloo"
    else:
        raise UserError(
            f"--device {device_name} cannot run under torchrun; use --device cuda or cpu."
        )
    dist.init_process_group(
        backend,
        timeout=timedelta(seconds=timeout_s),
        device_id=torch.device(device_name) if backend == "nccl" else None,
    )
    return Distributed(rank, local_rank, world_size, backend, device_name)


def stop(context: Distributed, together: bool) -> None:
    """Leaves the process group. ``together``: after a run that ended the same way on every
    rank (finished, or stopped by an agreed signal), wait for all ranks first, since gloo
    aborts a process that leaves while another still finishes its records."""
    if context.enabled and dist.is_initialized():
        if together:
            dist.barrier()
        gc.collect()  # a DDP wrapper left in a reference cycle still holds the group
        dist.destroy_process_group()
