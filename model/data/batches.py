"""Batches of a split: random for training, in order for evaluation, and with labels for M2."""

from __future__ import annotations

import torch

from model.core.labels import UNLABELLED
from model.core.preprocess import scale
from model.data.base import Split


def training_batches(split: Split, batch_size: int, binarize: str = "none"):
    """Yield (x, y) batches of a random permutation; with "dynamic", each x is a fresh Bernoulli draw."""
    n = len(split)
    order = torch.randperm(n, device=split.x.device)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x = scale(split.x[idx])
        if binarize == "dynamic":
            x = torch.bernoulli(x)
        yield x, split.y[idx]


def eval_batches(split: Split, batch_size: int = 1000):
    """Yield (x, y) batches in order."""
    for start in range(0, len(split), batch_size):
        yield scale(split.x[start:start + batch_size]), split.y[start:start + batch_size]


def labelled_batches(split: Split, batch_size: int, binarize: str = "none"):
    """Batches of unlabelled images, each joined by as many labelled ones drawn from the few labels.

    With 100 labels among 50,000 images a random batch of 64 holds a labelled image one time in
    eight, and the classification term of eq. 9 hardly acts. As in Kingma et al.'s and pyro's
    implementations, every step sees a labelled minibatch too; an epoch is one pass over the
    unlabelled images. Without hidden labels this is `training_batches`.
    """
    known = split.y != UNLABELLED
    if known.all() or not known.any():
        yield from training_batches(split, batch_size, binarize)
        return
    with_labels, without = Split(split.x[known], split.y[known]), Split(split.x[~known], split.y[~known])
    n_labelled = min(batch_size, len(with_labels))
    for x, y in training_batches(without, batch_size, binarize):
        pick = torch.randint(len(with_labels), (n_labelled,), device=split.x.device)
        x_l = scale(with_labels.x[pick])
        if binarize == "dynamic":
            x_l = torch.bernoulli(x_l)
        yield torch.cat([x_l, x]), torch.cat([with_labels.y[pick], y])
