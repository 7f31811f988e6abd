"""Several processes (``accelerate launch``, ``torchrun``): each prunes with its shard of the calibration samples.

Statistics are sums, so a block's statistics are all-reduced before pruning and every process prunes from
the same numbers; the pruned weights are then broadcast from the main process so that every process ends
with bit-identical weights even where kernels are not deterministic across devices. Only the main process
writes files.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_sums",
    "backend",
    "barrier",
    "broadcast_",
    "execution_record",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "main_process_first",
    "process_index",
    "resolve_device",
    "shard_slice",
    "world_size",
]

logger = logging.getLogger(__name__)

# torchrun / accelerate launch set WORLD_SIZE; accelerate's multi-CPU launch through mpirun sets the MPI ones.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def init_distributed() -> bool:
    """Join the process group when launched with several processes; ``True`` when distributed.

    Uses accelerate's ``PartialState``, which reads what ``accelerate launch`` and ``torchrun`` put in the
    environment (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...) and picks NCCL on GPUs and gloo on CPUs.
    A process group the caller already initialized is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if max(int(os.environ.get(name, "1") or 1) for name in _WORLD_SIZE_VARIABLES) <= 1:
        return False
    from accelerate import PartialState

    PartialState()
    if not is_distributed():
        logger.warning(
            "The launcher asked for several processes, but no process group of more than one came up; this process "
            "prunes with all the calibration samples."
        )
        return False
    # Read from torch.distributed, not accelerate's state, which can describe the process before the group is up.
    logger.info("Process %d of %d (%s backend).", dist.get_rank(), dist.get_world_size(), backend())
    return True


def is_distributed() -> bool:
    """``True`` inside an initialized process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def process_index() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """``True`` in the process that writes files (rank 0), and when not distributed."""
    return process_index() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_process_first():
    """Run the body in the main process first, then in the others (e.g. downloads into a shared cache)."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def shard_slice(total: int) -> slice:
    """This process's contiguous share of ``total`` items (the first ``total % world`` processes get one more)."""
    size, rank = world_size(), process_index()
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def execution_record(samples: tuple[int, int], devices: list[str]) -> dict[str, Any]:
    """How the prune ran, the same in every process: the number of processes, the backend, and per process its
    share ``[start, stop)`` of the calibration samples and the devices its blocks ran on (gathered from all)."""
    mine = {"rank": process_index(), "samples": list(samples), "devices": list(devices)}
    if not is_distributed():
        return {"world_size": 1, "backend": None, "processes": [mine]}
    processes: list[Any] = [None] * world_size()
    dist.all_gather_object(processes, mine)
    return {"world_size": world_size(), "backend": backend(), "processes": processes}


def backend() -> str | None:
    """The process group's backend (``"gloo"``, ``"nccl"``, ``"gloo+nccl"`` for one per device type), or ``None``."""
    if not is_distributed():
        return None
    name = dist.get_backend()
    if name and name != "undefined":
        return name
    # A group made without a backend name has one per device type: the config reads "cpu:gloo,cuda:nccl".
    names = [part.split(":")[-1] for part in str(dist.get_backend_config()).split(",")]
    return "+".join(dict.fromkeys(names))


def _communication_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(values: list[float]) -> list[float]:
    """Sum each value over all processes (float64); returns ``values`` unchanged when not distributed."""
    if not is_distributed() or not values:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_communication_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with process ``src``'s value (in place when the backend can use it directly)."""
    if not is_distributed():
        return tensor
    device = _communication_device()
    if tensor.device == device and tensor.is_contiguous():
        dist.broadcast(tensor, src=src)
        return tensor
    buffer = tensor.to(device).contiguous()
    dist.broadcast(buffer, src=src)
    with torch.no_grad():
        tensor.copy_(buffer.to(tensor.device))
    return tensor


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``"cuda"`` without an index means this process's GPU (``LOCAL_RANK``) under a multi-process launch."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cpu" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device(device.type, int(os.environ["LOCAL_RANK"]))
    return device
