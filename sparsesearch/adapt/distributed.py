"""Distributed helpers: one process per device under ``torchrun``; gloo on CPU, NCCL on GPU.

Nothing here is needed for a single process: :func:`setup` returns a world of one when ``WORLD_SIZE`` is
not set, and every helper is then a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import SparseSearchError

__all__ = ["DistInfo", "setup", "backend", "teardown", "barrier", "all_gather_object", "all_reduce_mean", "fingerprint"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False
    group: bool = False  # a process group is in use (with one process too: torchrun --nproc_per_node 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether training goes through the process group (DDP, collectives)."""
        return self.world_size > 1 or self.group


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SparseSearchError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group that ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    ``device``: "auto" (CUDA if available, else CPU), "cpu" or "cuda". On CUDA each process takes device
    LOCAL_RANK and the backend is NCCL; on CPU it is gloo. A group that is already initialised is reused.
    Under torchrun the group is joined even with one process (``--nproc_per_node 1``), so that one process runs
    the same DDP and NCCL code as N; without torchrun (no TORCHELASTIC_RUN_ID) one process trains alone.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise SparseSearchError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SparseSearchError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    dev = torch.device("cuda", local % max(1, torch.cuda.device_count())) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistInfo(0, 1, 0, dev, False)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, False, group=True)
    backend = "nccl" if use_cuda else "gloo"
    kw: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
    if use_cuda:
        kw["device_id"] = dev
    try:
        dist.init_process_group(**kw)
    except (RuntimeError, ValueError) as e:
        raise SparseSearchError(
            f"cannot join the {backend} process group (rank {rank}/{world}): {str(e).splitlines()[0]}"
        ) from None
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, True, group=True)


def backend(info: DistInfo) -> str | None:
    """The process group's backend ("nccl", "gloo"), or None when training alone."""
    return str(dist.get_backend()) if info.distributed and dist.is_initialized() else None


def teardown(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] for one process)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(info: DistInfo, values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a float tensor (returned as a new tensor; the input is unchanged)."""
    if not info.distributed:
        return values.clone()
    out = values.detach().clone().to(info.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / info.world_size).cpu()


def fingerprint(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer's bytes: equal across ranks iff their weights are identical."""
    import hashlib  # noqa: PLC0415

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
