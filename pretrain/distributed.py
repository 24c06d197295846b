"""All torch.distributed plumbing of the trainer, in one place.

One entry point runs on 1 CPU, 1 GPU or N GPUs: launched by ``torchrun`` (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` set) it joins a process group,
NCCL on GPUs and gloo on CPU; otherwise it stays a single process and every helper here is a no-op.
The student is replicated with DDP or sharded with FSDP2 (``fully_shard``), chosen by config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def pick_device(local_rank: int, use_cuda: bool | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (or forced), else CPU. Probed here, not at import."""
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def init(use_cuda: bool | None = None) -> DistInfo:
    """Join the torchrun process group (gloo on CPU, NCCL on GPU) or stay a single process."""
    if not launched_by_torchrun():
        device = pick_device(0, use_cuda)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistInfo(0, 1, 0, device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = pick_device(local, use_cuda)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local, device)


def set_cpu_threads(world_size: int, loader_workers: int) -> int:
    """Intra-op threads of a CPU trainer when ``OMP_NUM_THREADS`` is unset: the cores of this process's
    share left after its loader workers (at least 1). Oversubscribed OpenMP threads wait at every
    op's barrier for a descheduled sibling: on a busy 2-core machine that made steps 25x slower."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(world_size, 1) - loader_workers)
    torch.set_num_threads(threads)
    return threads


def is_enabled() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def barrier() -> None:
    """Rank 0 writes, the others wait here until it is done."""
    if is_enabled():
        dist.barrier()


def shutdown() -> None:
    if is_enabled():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is untouched)."""
    out = values.detach().clone()
    if is_enabled():
        dist.all_reduce(out)
        out /= get_world_size()
    return out


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only when ``flag`` holds on every rank (used so all ranks stop together on a NaN)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if is_enabled():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_enabled():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the student when distributed (gradients all-reduced during backward), else as is."""
    if not is_enabled():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def shard_fsdp(module: nn.Module, blocks: list[nn.Module], mp_dtype: torch.dtype | None) -> nn.Module:
    """FSDP2: shard each transformer block, then the rest of ``module`` (in place; returns it).

    ``mp_dtype`` (bf16 on GPU) sets parameter compute dtype with fp32 gradient reduction, like the
    reference's mixed precision policy. Works on CPU with gloo as well (tested).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32 if mp_dtype else None)
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(module, mp_policy=mp)
    return module
