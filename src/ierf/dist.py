"""``torchrun`` ranks: who am I, run on rank 0, wait for the others.

Long runs (an atlas build, a data-set-wide concept graph) split their pending work
round-robin over the ranks of an initialised ``torch.distributed`` process group and commit
it into one store (rank 0 holding its writer lock); without a process group everything runs
as rank 0 of 1.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable

import torch
import torch.distributed as dist

from ierf.errors import IerfError


def distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised. Under ``torchrun``
    (``RANK`` and ``WORLD_SIZE`` set) one is initialised (gloo) on first use, so that the
    ranks coordinate instead of each doing all the work as a second writer."""
    if not dist.is_available():
        return False
    if not dist.is_initialized() and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
        atexit.register(_destroy)
    return dist.is_initialized()


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if distributed() and dist.get_world_size() > 1:
        dist.barrier()


def on_rank0(fn: Callable[[], object]) -> None:
    """Run ``fn`` on rank 0; the other ranks wait and raise the same :class:`IerfError` if
    it fails (so that no rank goes on alone)."""
    rank, _ = rank_world()
    error = None
    if rank == 0:
        try:
            fn()
        except IerfError as e:
            error = str(e)
            if not distributed():
                raise
    if distributed():
        box = [error]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise IerfError(box[0])


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """``t`` averaged over the ranks (every rank gets the same tensor; ``t`` itself without a
    process group). For data-parallel steps: the mean of equal-sized minibatches' means is
    the mean over their union."""
    if not distributed() or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def gather_to_rank0(obj: object) -> list[object] | None:
    """Every rank's ``obj`` on rank 0, in rank order (``None`` on the others); ``[obj]``
    without a process group."""
    if not distributed():
        return [obj]
    rank, world = dist.get_rank(), dist.get_world_size()
    box: list[object] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, box, dst=0)
    return box
