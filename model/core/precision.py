"""How the networks compute: fp32, or bf16-mixed (autocast) with every log-likelihood in fp32.

`--precision bf16-mixed` runs the encoder's and decoder's matrix products and convolutions in
bfloat16 under `torch.autocast` (AMX or AVX-512 BF16 on a CPU, tensor cores on CUDA); the
networks hand their outputs back as float32 (`model.nets`), so the distributions, their
log-densities, the KL terms, the log-sum-exp of the importance-weighted bound and every sum over
pixels or samples are computed in fp32. The weights, their gradients and Adam's state stay fp32:
bf16 has fp32's range, so no loss scaling is needed. docs/performance.md measures the speed and
the bounds side by side with fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("fp32", "bf16-mixed")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context the networks run in for `precision` on `device` (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16-mixed":
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"precision bf16-mixed: expected a cpu or cuda device, got {device.type}")
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")


def full_precision(device: torch.device) -> AbstractContextManager:
    """Autocast off for the block: for products that are sums of log-likelihood terms."""
    return torch.autocast(device.type, enabled=False)
