"""`--compile`: the loss and the importance-weighted bound through `torch.compile` (inductor).

What is compiled: a training step's forward pass (the objective: networks, distributions, the
bound's terms and their sums; the backward pass is compiled with it by AOTAutograd), and each
chunk of K importance samples of `iwae_bound` with its log-sum-exp (evaluation, calibration, the
anomaly scores). What it buys: the elementwise work around the matrix products (softplus, the
sums, the reparameterisation) fused into a few vectorised C++ loops, where eager torch runs about
a hundred small operators; docs/performance.md measures it with `benchmarks/roofline.py`.

Same draws: the random draws fall back to eager torch's generators (inductor's
`fallback_random`), so compiled code draws the samples eager code of the same seed draws: a bound
and each training step agree with eager torch to float rounding (tests/test_compile.py). Over
thousands of steps those last-bit differences grow, as any change of arithmetic makes them grow
(thread counts, bf16): a 5-epoch MNIST run ends within about 0.4 nats of the eager run, not on it
(docs/performance.md).

The cost: each new graph compiles once per process (seconds to tens of seconds on a CPU); inductor
caches what it compiled on disk (`TORCHINDUCTOR_CACHE_DIR`, by default under the system's temp
folder), so the next process that compiles the same graph reads it back. On a CPU inductor builds
C++ and needs a compiler (`g++`, or `$CXX`) on the PATH.
"""

from __future__ import annotations

import contextvars
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

# inductor's options for everything compiled here: random ops call eager torch's generators.
OPTIONS = {"fallback_random": True}

_active: contextvars.ContextVar[bool] = contextvars.ContextVar("vae_compile", default=False)


class CompilerMissing(ValueError):
    """--compile on a CPU without a C++ compiler for inductor (a ValueError: the CLI reports it as it
    reports any option it cannot honour)."""


def check_available(device: torch.device) -> None:
    """Raise `CompilerMissing` when `torch.compile` cannot build kernels for `device` here."""
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            raise CompilerMissing(f"--compile on the CPU needs a C++ compiler for inductor: expected {cxx!r} on the "
                                  "PATH (install gcc or g++, or set CXX), found none; or run without --compile")


def compiled(fn: Callable) -> Callable:
    """`fn` through torch.compile with this library's options (see the module docstring)."""
    return torch.compile(fn, options=dict(OPTIONS))


@contextmanager
def compiling(enabled: bool = True) -> Iterator[None]:
    """Within the block, `iwae_bound` runs its chunks compiled (when `enabled`); nests and restores."""
    token = _active.set(bool(enabled))
    try:
        yield
    finally:
        _active.reset(token)


def active() -> bool:
    """Whether the caller is inside `compiling(True)`."""
    return _active.get()


@functools.cache
def chunk_log_sum_exp() -> Callable:
    """log Σ_k w_k over one chunk of k importance samples, (B,), compiled once per process."""
    def run(model: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
        return torch.logsumexp(model.log_weights(x, k), 0)
    return compiled(run)


class CompiledObjective:
    """An objective whose `__call__(model, x, y, progress)` runs compiled; everything else is the
    objective's own (its schedule, its attributes)."""

    def __init__(self, objective):
        self.objective = objective
        self._call = compiled(objective.__call__)

    def __call__(self, model, x, y, progress):
        return self._call(model, x, y, progress)

    def __getattr__(self, name):
        return getattr(self.objective, name)
