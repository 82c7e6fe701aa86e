"""Batches of a split: random for training, in order for evaluation, and with labels for M2.

Under `torchrun` every process trains on its `Shard` of each global batch: all of them draw the
same seeded permutation, cut it into global batches of `--batch-size` images and take their own
part of each, so an epoch still sees every image exactly once and `--batch-size` keeps meaning the
images of one optimiser step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.core.labels import UNLABELLED
from model.core.preprocess import scale
from model.data.base import Split


@dataclass(frozen=True)
class Shard:
    """This process's part of every global batch: `rank` of `world_size` processes, and the seed of the
    epoch's permutation (the same on every rank)."""

    rank: int
    world_size: int
    seed: int

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"shard: expected 0 <= rank < world_size, got rank {self.rank} of {self.world_size}")


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """The images each of `world_size` processes takes of a global batch of `batch_size`.

    Raises:
        ValueError: the global batch does not divide evenly among the processes.
    """
    if batch_size % world_size:
        below = batch_size - batch_size % world_size
        above = below + world_size
        suggestion = f"{below} or {above}" if below else f"{above}"
        raise ValueError(
            f"--batch-size {batch_size} is the global batch (all processes together) and must divide evenly among "
            f"{world_size} processes; got {batch_size} = {batch_size // world_size} × {world_size} + "
            f"{batch_size % world_size} (try {suggestion})")
    return batch_size // world_size


def shard_sizes(total: int, world_size: int) -> list[int]:
    """`total` items split among `world_size` ranks as evenly as possible, the first ranks one more."""
    base, extra = divmod(total, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


def shard_slice(total: int, rank: int, world_size: int) -> slice:
    """The contiguous part of `total` items that `rank` evaluates (`shard_sizes`), in rank order."""
    sizes = shard_sizes(total, world_size)
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def global_batches(n: int, batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each global batch of a permutation of n items.

    The last batch is short when `batch_size` does not divide n; one so short that some process
    would get no image of it (fewer than `world_size` images) joins the batch before it instead.
    """
    if n < world_size:
        raise ValueError(f"the training split has {n} images; expected at least one per process ({world_size})")
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world_size:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def shard_indices(n: int, batch_size: int, shard: Shard) -> list[Tensor]:
    """The indices (CPU, int64) of `shard`'s part of each global batch of one epoch.

    Every rank draws the same permutation (seeded with `shard.seed`) and takes the `shard_slice` of
    each global batch; across ranks an epoch holds every index exactly once.
    """
    per_rank_batch_size(batch_size, shard.world_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(shard.seed))
    return [order[start:stop][shard_slice(stop - start, shard.rank, shard.world_size)]
            for start, stop in global_batches(n, batch_size, shard.world_size)]


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch of n images (what the schedules count an epoch's fraction by)."""
    if world_size == 1:
        return -(-n // batch_size)
    return len(global_batches(n, batch_size, world_size))


def training_batches(split: Split, batch_size: int, binarize: str = "none", shard: Shard | None = None):
    """Yield (x, y) batches of a random permutation; with "dynamic", each x is a fresh Bernoulli draw.

    With a `shard`, this process's part of each global batch of `batch_size` (`shard_indices`).
    """
    n = len(split)
    if shard is None:
        order = torch.randperm(n, device=split.x.device)
        parts = (order[start:start + batch_size] for start in range(0, n, batch_size))
    else:
        parts = (idx.to(split.x.device) for idx in shard_indices(n, batch_size, shard))
    for idx in parts:
        x = scale(split.x[idx])
        if binarize == "dynamic":
            x = torch.bernoulli(x)
        yield x, split.y[idx]


def eval_batches(split: Split, batch_size: int = 1000):
    """Yield (x, y) batches in order."""
    for start in range(0, len(split), batch_size):
        yield scale(split.x[start:start + batch_size]), split.y[start:start + batch_size]


def labelled_batches(split: Split, batch_size: int, binarize: str = "none", shard: Shard | None = None):
    """Batches of unlabelled images, each joined by as many labelled ones drawn from the few labels.

    With 100 labels among 50,000 images a random batch of 64 holds a labelled image one time in
    eight, and the classification term of eq. 9 hardly acts. As in Kingma et al.'s and pyro's
    implementations, every step sees a labelled minibatch too; an epoch is one pass over the
    unlabelled images. Without hidden labels this is `training_batches`. With a `shard`, this
    process takes its part of the unlabelled images and draws its share of the labelled minibatch.
    """
    known = split.y != UNLABELLED
    if known.all() or not known.any():
        yield from training_batches(split, batch_size, binarize, shard)
        return
    with_labels, without = Split(split.x[known], split.y[known]), Split(split.x[~known], split.y[~known])
    n_labelled = min(batch_size, len(with_labels))
    if shard is not None:
        n_labelled = shard_sizes(n_labelled, shard.world_size)[shard.rank]
    for x, y in training_batches(without, batch_size, binarize, shard):
        pick = torch.randint(len(with_labels), (n_labelled,), device=split.x.device)
        x_l = scale(with_labels.x[pick])
        if binarize == "dynamic":
            x_l = torch.bernoulli(x_l)
        yield torch.cat([x_l, x]), torch.cat([with_labels.y[pick], y])
