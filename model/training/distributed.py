"""One run trained by several processes (`torchrun`): who this process is, the collectives the run
needs, and the model with its objective as DistributedDataParallel sees it.

`torchrun --nproc-per-node N -m model train ...` starts N processes with WORLD_SIZE, RANK and
LOCAL_RANK in their environment. `Processes.from_environment()` reads them; without them (plain
`vae train`) it is `SINGLE`, one process, whose collectives are the identity and cost nothing.
The group talks gloo on the CPU and NCCL on CUDA (one process per GPU, cuda:LOCAL_RANK), chosen
from the run's device. docs/distributed.md says how to launch it and what was tested.
"""

from __future__ import annotations

import inspect
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from model.core.schedules import Progress
from model.data.base import Split
from model.data.batches import shard_slice
from model.kinds.base import Objective

TIMEOUT_ENV = "VAE_DISTRIBUTED_TIMEOUT"
# How long a process waits in one collective for the others (seconds). A process that dies closes
# its connections and the others fail at once; this bounds the wait for one that hangs. The longest
# legitimate wait is the others' while rank 0 loads the data first (it may download it or build a
# folder's cache).
DEFAULT_TIMEOUT_S = 600

# What a derived seed is for (`stream_seed`), so no two streams of a run share a seed.
PERMUTATION, TRAINING_NOISE, EVALUATION_NOISE = 0, 1, 2


class DistributedError(RuntimeError):
    """The environment torchrun sets is not one this run can use; the message says what was found."""


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes training one run: `rank` of `world_size`, and
    `local_rank` on its machine (its GPU). The collectives must be called by every rank in the
    same order; with one process they return their input."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise DistributedError(f"expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got RANK={self.rank}, "
                                   f"WORLD_SIZE={self.world_size}, LOCAL_RANK={self.local_rank}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Processes":
        """The processes torchrun's WORLD_SIZE, RANK and LOCAL_RANK describe; `SINGLE` without them."""
        environ = os.environ if environ is None else environ
        try:
            world_size = int(environ.get("WORLD_SIZE", "1"))
            if world_size == 1:
                return SINGLE
            return cls(int(environ["RANK"]), world_size, int(environ.get("LOCAL_RANK", "0")))
        except (KeyError, ValueError) as error:
            raise DistributedError(f"WORLD_SIZE={environ.get('WORLD_SIZE')!r} asks for several processes, but RANK "
                                   f"and LOCAL_RANK are not integers ({error}); launch with torchrun") from None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    def shard(self, split: Split) -> Split:
        """This rank's contiguous part of a split (`model.data.batches.shard_slice`); all of it for one process."""
        if not self.distributed:
            return split
        part = shard_slice(len(split), self.rank, self.world_size)
        return Split(split.x[part], split.y[part], streamed=split.streamed)

    def sum(self, values: Mapping[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (in float64); every rank passes the same keys in the same order."""
        if not self.distributed:
            return dict(values)
        keys = list(values)
        total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return dict(zip(keys, total.tolist()))

    def stack(self, value: Tensor) -> Tensor:
        """Every rank's `value` (the same shape on each), stacked in rank order: (world_size, *shape)."""
        if not self.distributed:
            return value.unsqueeze(0)
        local = value.detach().to(_collective_device()).contiguous()
        out = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(out, local)
        return torch.stack(out).to(value.device)

    def gather(self, values: Tensor) -> Tensor:
        """Every rank's rows (n_r, ...) concatenated in rank order, on every rank: (Σ n_r, ...)."""
        if not self.distributed:
            return values
        sizes = self.stack(torch.tensor(values.shape[0])).tolist()
        padded = values.new_zeros((max(sizes), *values.shape[1:]))
        padded[:values.shape[0]] = values
        rows = self.stack(padded)
        return torch.cat([rows[rank, :size] for rank, size in enumerate(sizes)])

    def broadcast(self, obj):
        """Rank 0's `obj` (any picklable value) on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = Processes()


def _collective_device() -> torch.device:
    """Where a collective's tensors must be: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def timeout() -> timedelta:
    """The collectives' timeout: VAE_DISTRIBUTED_TIMEOUT seconds, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise DistributedError(f"{TIMEOUT_ENV}: expected a positive number of seconds, got {raw!r}")
    return timedelta(seconds=seconds)


def process_device(device: torch.device, processes: Processes) -> torch.device:
    """The device this process trains on: its own GPU (cuda:LOCAL_RANK) when the run is on CUDA."""
    if device.type != "cuda" or not processes.distributed:
        return device
    if processes.local_rank >= torch.cuda.device_count():
        raise DistributedError(f"LOCAL_RANK {processes.local_rank} has no GPU: this machine has "
                               f"{torch.cuda.device_count()}; start at most that many processes per node")
    torch.cuda.set_device(processes.local_rank)
    return torch.device("cuda", processes.local_rank)


@contextmanager
def joined(processes: Processes, device: torch.device) -> Iterator[Processes]:
    """Join the process group of `processes` for the block: NCCL for a CUDA `device`, else gloo.

    One process, or a group someone else already started (a test, a caller's own script), is left
    as it is.
    """
    if not processes.distributed or dist.is_initialized():
        yield processes
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout(), **({"device_id": device} if backend == "nccl" else {}))
    try:
        with _terminate_as_interrupt():
            yield processes
    finally:
        dist.destroy_process_group()


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt for the block, as Ctrl-C would.

    torchrun stops the other processes with SIGTERM when one fails; Python's default would end the
    process where it stands, leaving an atomic write's temporary file behind and saying nothing
    about the run. Signals reach only the main thread, so elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stream_seed(seed: int, purpose: int, *parts: int) -> int:
    """A seed of its own for each (run seed, purpose, epoch, rank...) stream, drawn by numpy's
    SeedSequence so that streams never coincide as `seed + rank` would with the next run's seed."""
    entropy = [seed % 2**64, purpose, *parts]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class ObjectiveModule(nn.Module):
    """A model and its objective as one module whose `forward(x, y, progress)` is the objective's
    (loss, diagnostics).

    The objectives call the model's methods (`elbo_terms`, `log_weights`...), never its `forward`,
    so DistributedDataParallel wrapped around the model alone would not see the parameters used;
    wrapped around this, its forward is the whole loss.
    """

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: Tensor, y: Tensor, progress: Progress) -> tuple[Tensor, dict]:
        return self.objective(self.model, x, y, progress)


def data_parallel(model: nn.Module, objective: Objective, device: torch.device) -> DistributedDataParallel:
    """`model` and `objective` under DistributedDataParallel (its constructor copies rank 0's weights to
    every rank; each backward averages the gradients).

    Every kind uses all of its parameters in every step (tests/test_distributed.py trains each), so
    the reducer need not look for unused ones; the models' buffers are constants (the prior, the
    class labels), so none is broadcast.
    """
    # torch 2.14 renames broadcast_buffers=False to forward_sync_buffers=False (buffers still synced at init).
    quiet = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    return DistributedDataParallel(ObjectiveModule(model, objective),
                                   device_ids=[device.index] if device.type == "cuda" else None,
                                   **({"forward_sync_buffers": False} if quiet else {"broadcast_buffers": False}))
