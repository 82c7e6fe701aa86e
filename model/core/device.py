"""Where tensors live: one rule for "auto", "cpu" and "cuda", for training and serving alike."""

from __future__ import annotations

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """"auto" is CUDA when torch finds a device, else the CPU; "cuda" without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch finds no CUDA device (use cpu or auto)")
    return torch.device(name)


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's parameters (a model lives on one device)."""
    return next(module.parameters()).device
