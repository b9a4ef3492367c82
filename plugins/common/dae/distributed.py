"""DAE training in several processes under ``torchrun`` (PyTorch DistributedDataParallel).

torchrun starts one process per GPU (or per CPU share) and tells each its place through the
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` environment variables (:func:`torchrun_ranks`).
Every process draws the same global batch of a step and trains on its own rows of it
(:meth:`Ranks.rows`); DDP averages the gradients, so every process takes the optimiser step
that one process would take with the whole batch. Without these variables nothing here is used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from wsbench.api import torch_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
"""How long a process waits for the others in one collective (a step's gradient average) before
it fails instead of hanging; torchrun itself stops all processes as soon as one fails."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes files and reports."""
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        """Refuse a global batch that the processes cannot share equally."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by the {self.world_size} torchrun "
                "processes (WORLD_SIZE); choose a batch size that is a multiple of the number "
                "of processes, or start another number of processes"
            )

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch of ``batch_size`` (consecutive, equal shares)."""
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


def torchrun_ranks() -> Ranks | None:
    """This process's ranks from torchrun's environment; ``None`` outside torchrun."""
    values = {name: os.environ.get(name) for name in TORCHRUN_VARIABLES}
    if all(value is None for value in values.values()):
        return None
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise ValueError(
            f"torchrun environment incomplete: {', '.join(missing)} not set beside the others of "
            f"{', '.join(TORCHRUN_VARIABLES)}; start training with torchrun, or unset them all"
        )
    try:
        rank, world_size, local_rank = (int(values[name]) for name in TORCHRUN_VARIABLES)
    except ValueError as exc:
        raise ValueError(f"torchrun environment {values} holds a non-integer rank") from exc
    return Ranks(rank, world_size, local_rank)


def is_main_process() -> bool:
    """Whether this process writes files and reports: a single process, or rank 0."""
    ranks = torchrun_ranks()
    return ranks is None or ranks.main


def rank_device(device: str, ranks: Ranks) -> str:
    """The device of this process for a method's ``device``: ``cuda:LOCAL_RANK`` for ``cuda``,
    the CPU for ``cpu``."""
    kind = torch_device(device)
    if kind.type == "cuda" and kind.index is None:
        return str(torch_device(f"cuda:{ranks.local_rank}"))
    if kind.type == "cpu":
        return device
    raise ValueError(
        f"device={device!r} cannot be shared by torchrun processes; pass device=cuda (each "
        "process takes cuda:LOCAL_RANK) or device=cpu"
    )


@contextmanager
def process_group(ranks: Ranks, device: str) -> Iterator[None]:
    """The default process group of this job while the block runs: NCCL on a GPU, gloo on the
    CPU; the address of rank 0 comes from torchrun (``MASTER_ADDR``, ``MASTER_PORT``)."""
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(
        "nccl" if on_gpu else "gloo",
        rank=ranks.rank,
        world_size=ranks.world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class Replica:
    """This process's part of a DDP run: its ranks and the loss module DDP wraps."""

    ranks: Ranks
    loss: DistributedDataParallel

    @classmethod
    def of(cls, loss: nn.Module, ranks: Ranks) -> Replica:
        """Wrap ``loss`` (on this process's device) for DDP; every process must call this."""
        device = next(loss.parameters()).device
        ids = [device] if device.type == "cuda" else None
        return cls(ranks, DistributedDataParallel(loss, device_ids=ids))

    def mean(self, value: torch.Tensor) -> float:
        """A scalar averaged over all processes (a step's loss over the global batch)."""
        total = value.detach().clone()
        dist.all_reduce(total)
        return float(total.item()) / self.ranks.world_size
