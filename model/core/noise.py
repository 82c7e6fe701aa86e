"""Where a model's random numbers come from.

Training draws from torch's global generator. The service needs more: a request's samples must be
the same whether it ran alone or was batched with others, so each request's rows draw from their
own seeded generator (`RowwiseNoise`). Models take a `Noise` wherever they sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Noise:
    """Standard noise from torch's global generator, drawn on the target device."""

    def normal(self, sample_shape: Sequence[int], batch_size: int, event_shape: Sequence[int],
               *, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """eps ~ N(0, 1), shaped `(*sample_shape, batch_size, *event_shape)`."""
        return torch.randn((*sample_shape, batch_size, *event_shape), device=device, dtype=dtype)

    def uniform(self, sample_shape: Sequence[int], batch_size: int, event_shape: Sequence[int],
                *, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """u ~ U(0, 1), shaped `(*sample_shape, batch_size, *event_shape)`."""
        return torch.rand((*sample_shape, batch_size, *event_shape), device=device, dtype=dtype)


class RowwiseNoise(Noise):
    """Noise whose batch rows come in groups, each group drawn from its own seeded generator.

    Args:
        seeds: one seed per group (None: a fresh, unpredictable seed).
        sizes: how many consecutive batch rows each group owns.

    The numbers a group gets depend only on its seed and the sequence of calls, never on the
    other groups, so a request batched with others sees exactly the noise it would see alone.
    Noise is drawn on the CPU (one generator per group) and then moved to the device.
    """

    def __init__(self, seeds: Sequence[int | None], sizes: Sequence[int]):
        if len(seeds) != len(sizes):
            raise ValueError(f"expected one seed per group, got {len(seeds)} seeds for {len(sizes)} groups")
        self.sizes = list(sizes)
        self.generators = []
        for seed in seeds:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
            self.generators.append(generator)

    def _draw(self, draw, sample_shape, batch_size, event_shape, device, dtype) -> Tensor:
        if batch_size != sum(self.sizes):
            raise ValueError(f"noise for {batch_size} rows requested, but the groups hold {sum(self.sizes)}")
        parts = [
            draw((*sample_shape, size, *event_shape), generator=generator, dtype=dtype)
            for generator, size in zip(self.generators, self.sizes)
        ]
        return torch.cat(parts, dim=len(sample_shape)).to(device)

    def normal(self, sample_shape, batch_size, event_shape, *, device, dtype=torch.float32) -> Tensor:
        return self._draw(torch.randn, sample_shape, batch_size, event_shape, device, dtype)

    def uniform(self, sample_shape, batch_size, event_shape, *, device, dtype=torch.float32) -> Tensor:
        return self._draw(torch.rand, sample_shape, batch_size, event_shape, device, dtype)


GLOBAL_NOISE = Noise()


def rsample(q, sample_shape: Sequence[int] = (), noise: Noise | None = None) -> Tensor:
    """z = mu + sigma · eps from a diagonal Gaussian q of batch shape (*S, B, D), eps drawn from `noise`.

    Returns (*sample_shape, *S, B, D). The noise rows follow the images (axis −2), so a request's
    seeded rows stay its own however the batch was assembled (see `RowwiseNoise`).
    """
    *leading, batch, features = q.mu.shape
    eps = (noise or GLOBAL_NOISE).normal((*sample_shape, *leading), batch, (features,),
                                         device=q.mu.device, dtype=q.mu.dtype)
    return q.rsample(eps=eps)
