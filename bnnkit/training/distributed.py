"""Multi-process training through ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m bnnkit train RECIPE`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them, picks the device (``cuda:LOCAL_RANK`` with
NCCL, or CPU with gloo) and joins the process group. Rank 0 alone logs and writes checkpoints.
The recipe's ``data.batch_size`` is the **global** batch: each process takes
``batch_size / world_size`` samples per step, so a run gives the same updates for any number
of processes (exactly, for a model without batch norm).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as td

from bnnkit.errors import ConfigError


@dataclass
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control: Any = None  # a gloo group for host-side agreement (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            td.all_reduce(t, op=td.ReduceOp.SUM)
        return t

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(t) / self.world_size if self.enabled else t

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            td.all_reduce(t, op=td.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.enabled:
            td.barrier()

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer). A host-side
        all-reduce of one integer (over gloo: no device sync under NCCL)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([int(bool(flag))], dtype=torch.int32)
        td.all_reduce(t, op=td.ReduceOp.MAX, group=self.control)
        return bool(t.item())


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` if CUDA is available, else CPU."""
    if spec == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "needs CUDA, which is not available here", location=("training", "device"),
            value=spec, allowed="'auto' or 'cpu'",
        )  # fmt: skip
    return device


def _attempt_store(rank: int, world: int) -> td.Store | None:
    """After an elastic restart (``TORCHELASTIC_RESTART_COUNT`` > 0), the rendezvous store
    under a prefix of its own: torchrun's agent keeps its store across restarts, and the new
    workers would otherwise read the dead ones' addresses from it (gloo: "connectFullMesh
    failed ... Connection refused"). ``None`` (the plain ``env://`` store) otherwise."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if attempt == 0:
        return None
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts it
    base = td.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                       is_master=not agent and rank == 0, multi_tenant=True)  # fmt: skip
    return td.PrefixStore(f"bnnkit/attempt_{attempt}", base)


def init_distributed(device_spec: str = "auto") -> Dist:
    """Join the process group when launched by torchrun; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local)
    control = None
    if world > 1 and not td.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                              store=_attempt_store(rank, world), rank=rank, world_size=world)  # fmt: skip
        if device.type == "cuda":
            control = td.new_group(backend="gloo")
    return Dist(rank, world, local, device, control)


def shutdown(dist: Dist, *, completed: bool) -> None:
    """Leave the process group.

    After a run that ``completed`` on every rank, the ranks first meet at a barrier, so that
    the last collective a process issues holds no tensor. Without it a rank that finishes
    early (rank 1 while rank 0 writes its checkpoint) can reach interpreter shutdown while
    gloo's worker thread is still releasing the last all-reduce's tensors; that release needs
    the GIL, which a finalizing interpreter no longer gives, and the process aborts
    ("terminate called without an active exception") although its work is done. Once DDP
    has used the group, gloo's threads outlive ``destroy_process_group`` (observed with
    torch 2.13), so the barrier, not the destroy, is what closes the race. A garbage collection
    first frees DDP wrappers that reference cycles keep alive (a reducer holds the group; freed
    only at interpreter shutdown, it aborted a rank the same way once, in a CI run under load).
    After a failure the barrier is skipped: the other ranks may never reach it.
    """
    if dist.enabled and td.is_initialized():
        gc.collect()  # free DDP wrappers (their reducers hold the group) kept alive by cycles
        if completed:
            td.barrier()
        td.destroy_process_group()


@contextlib.contextmanager
def process_group(device_spec: str = "auto") -> Iterator[Dist]:
    """``with process_group(device) as dist:`` joins (:func:`init_distributed`) and always
    leaves (:func:`shutdown`): completed when the block ends normally, failed when it raises."""
    dist = init_distributed(device_spec)
    try:
        yield dist
    except BaseException:
        shutdown(dist, completed=False)
        raise
    shutdown(dist, completed=True)
