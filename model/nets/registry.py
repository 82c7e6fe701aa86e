"""The network families a model can be built from (`--arch`). Add one: a module with the three
builders of `model.nets.base.Network`, and one line here."""

from __future__ import annotations

from model.nets import conv, mlp
from model.nets.base import Network

NETWORKS: dict[str, Network] = {
    "mlp": Network(mlp.encoder, mlp.decoder, mlp.conditional_encoder,
                   "multilayer perceptrons on flattened images (--hidden, --activation)"),
    "conv": Network(conv.encoder, conv.decoder, conv.conditional_encoder,
                    "stride-2 convolutional stages and their mirror (--conv-channels, --res-blocks, --activation)"),
}


def get_network(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r} (--arch); expected one of {sorted(NETWORKS)}") from None
