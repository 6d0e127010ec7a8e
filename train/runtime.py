"""Where the run executes: device choice, mixed precision and (optional) DDP process group.

DDP is initialised only when ``WORLD_SIZE > 1`` (set by ``torchrun``); otherwise everything is a
single process and these helpers are no-ops.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from soundception.shared.allocator import M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, mallopt
from soundception.train.config import UserError


@dataclass(frozen=True)
class Runtime:
    """Device and process-group facts of this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


DEVICE_TYPES = ("cpu", "cuda", "mps")  # where a model can run; torch also names devices that hold no data (meta)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when present, else CPU; any other name is checked, then used as given.

    Raises:
        UserError: a name torch does not know, a device that cannot run a model (``meta``), or one
            this machine lacks (``mps`` without Apple's GPU, ``cuda`` without CUDA, ``cuda:7`` with 2 GPUs).
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    choices = "auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device torch knows; use {choices}") from None
    if device.type not in DEVICE_TYPES:
        raise UserError(f"--device {name}: a model cannot run on {device.type!r} devices; use {choices}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: no Apple GPU (MPS) is available here (use auto or cpu)")
    return device


def start(device: str = "auto") -> Runtime:
    """Pick the device and, under ``torchrun`` with ``WORLD_SIZE > 1``, join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Runtime(device=resolve_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, local_rank)
    if chosen.type == "cuda":
        if device not in ("auto", "cuda"):
            raise UserError(f"--device {device} under torchrun: use auto or cuda (each rank takes cuda:LOCAL_RANK)")
        chosen = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        # rank 0 validates alone while the others wait at a barrier: allow a long evaluation
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(hours=2))
    return Runtime(device=chosen, rank=rank, world_size=world_size, local_rank=local_rank)


def stop(runtime: Runtime) -> None:
    """Leave the process group (if any)."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; fp32 (no autocast) on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bound_heap(*, mmap_threshold: int = 4 << 20, trim_threshold: int = 64 << 20, arena_max: int = 2) -> bool:
    """Keep a long CPU inference's heap from growing with time (glibc only; elsewhere nothing happens).

    glibc raises its mmap threshold to the size of each large block freed, so the windows and
    activations of later batches come from per-thread heaps that fragment and are never handed
    back: predicting a 10-hour soundscape grew to 2.9 GiB above the process's baseline. A fixed
    threshold returns large blocks to the kernel when freed, and two arenas stop the model's
    threads from each keeping a heap of their own. Returns True when the settings were applied.
    """
    return mallopt({M_MMAP_THRESHOLD: mmap_threshold, M_TRIM_THRESHOLD: trim_threshold, M_ARENA_MAX: arena_max})
