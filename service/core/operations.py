"""What each operation computes on a batch: the logic layer under the REST and OIP routes.

An operation is run on a *batch* that may hold several requests' rows (see `service.core.batching`):
`run_batch` stacks their inputs, gives each request's rows its own seeded noise
(`model.core.noise.RowwiseNoise`), runs one forward pass and splits the outputs back. Per-request
work that needs no forward pass (β, the false-positive rate, bits per dimension) happens after
the split, in `finish`, so requests with different values of those still share a pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from model.runs.checkpoint import Checkpoint
from model.core.noise import RowwiseNoise
from model.core.objectives import bits_per_dim, iwae_bound
from model.anomaly.predict import read_scores, score_images
from service.core.errors import BadInputError

InputKind = Literal["images", "z", "n"]


@dataclass(frozen=True)
class Call:
    """One request's share of a forward pass.

    Args:
        rows: how many batch rows the request owns (images, latents or samples).
        inputs: (rows, ...) float32 images or latents; None for `sample`.
        labels: (rows,) class labels for conditional decoding, or None.
        seed: seed of the request's noise; None draws a fresh one.
        key: settings of the forward pass; only calls with equal keys share a pass.
    """

    rows: int
    inputs: np.ndarray | None = None
    labels: np.ndarray | None = None
    seed: int | None = None
    key: tuple = ()


Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Operation:
    name: str
    input: InputKind
    forward: Callable[..., dict[str, Tensor]]  # (checkpoint, x or n, labels, noise, **key) -> batch-first tensors
    summary: str
    finish: Callable[..., Outputs] = field(default=lambda checkpoint, outputs, **params: outputs)


def _flat(probs: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C·H·W), row-major: the layout of image outputs on both protocols."""
    return probs.reshape(probs.shape[0], -1)


def _class_kwargs(ck: Checkpoint, labels: Tensor | None) -> dict:
    if labels is None:
        return {}
    # Refused before batching for kinds that are not conditional (`Inference.labels`); reaching here is a bug.
    assert ck.model.capabilities.conditional, f"kind {ck.model.kind!r} takes no class label y"
    return {"y": labels}


def _encode(ck: Checkpoint, x, labels, noise, *, num_samples: int = 0):
    out = ck.model.encode(x, num_samples=num_samples, noise=noise)
    if "z" in out:
        out["z"] = out["z"].transpose(0, 1)  # (S, B, D) -> (B, S, D): batch first, like every output
    return out


def _decode(ck: Checkpoint, z, labels, noise):
    return {"probs": _flat(ck.model.decode(z, **_class_kwargs(ck, labels)))}


def _sample(ck: Checkpoint, n: int, labels, noise):
    out = ck.model.sample(n, noise=noise, **_class_kwargs(ck, labels))
    return {**out, "probs": _flat(out["probs"])}  # z, probs, and e.g. M2's labels y


def _reconstruct(ck: Checkpoint, x, labels, noise):
    return {"probs": _flat(ck.model.reconstruct(x))}


def _elbo(ck: Checkpoint, x, labels, noise):
    terms = ck.model.elbo_terms(x, kl=ck.config.optim.kl, noise=noise)
    return {"log_px": terms.log_px, "kl": terms.kl}


def _finish_elbo(ck: Checkpoint, outputs: Outputs, *, beta: float = 1.0) -> Outputs:
    return {"elbo": outputs["log_px"] - beta * outputs["kl"], **outputs}


def _iwae(ck: Checkpoint, x, labels, noise, *, k: int, chunk_size: int):
    return {"log_px": iwae_bound(ck.model, x, k, chunk_size=chunk_size, noise=noise)}


def _finish_iwae(ck: Checkpoint, outputs: Outputs) -> Outputs:
    return {**outputs, "bits_per_dim": bits_per_dim(outputs["log_px"], math.prod(ck.model.input_shape))}


def classes_of(ck: Checkpoint) -> list[int] | None:
    """The labels of the classifier's output columns, where the checkpoint says them."""
    if ck.model.capabilities.native_classifier:
        described = ck.model.describe().get("classes")
        return None if described is None else [int(c) for c in described]
    if ck.classifier is None:
        return None
    return [int(c) for c in ck.classifier.classes.tolist()]


def class_names_of(ck: Checkpoint, classes: list[int] | None) -> list[str] | None:
    """The name of each of `classes`, where the run records names (a folder's class subfolders)."""
    names = ck.config.data.class_names
    if names is None or classes is None:
        return None
    by_label = dict(zip(ck.config.data.labels_known, names))
    return [by_label.get(c, str(c)) for c in classes]


def _classify(ck: Checkpoint, x, labels, noise):
    if ck.model.capabilities.native_classifier:  # like M2's q(y|x)
        probs = ck.model.classify(x)
    else:  # exercise 2.4's logistic regression on the posterior means
        probs = ck.classifier(ck.model.features(x))
    classes = classes_of(ck) or list(range(probs.shape[1]))
    return {"probs": probs, "labels": torch.as_tensor(classes, device=probs.device)[probs.argmax(-1)]}


def _anomaly(ck: Checkpoint, x, labels, noise, *, score: str, params: tuple = (), map: str | None = None,
             map_params: tuple = ()):
    return score_images(ck.model, x, score=score, params=dict(params), noise=noise, companions=ck.companions,
                        map=map, map_params=dict(map_params))


def threshold_of(ck: Checkpoint, score: str, threshold: str | None,
                 false_positive_rate: float | None) -> tuple[float, str, float]:
    """(threshold, which one, its false-positive rate) for a request (`AnomalyCalibration.threshold_for`)."""
    try:
        return ck.calibration.threshold_for(score, threshold, false_positive_rate)
    except ValueError as error:
        raise BadInputError(str(error)) from None


def _finish_anomaly(ck: Checkpoint, outputs: Outputs, *, score: str, false_positive_rate: float | None = None,
                    threshold: str | None = None, map: str | None = None) -> Outputs:
    threshold_of(ck, score, threshold, false_positive_rate)  # a bad combination is the client's 400
    return read_scores(ck.calibration, outputs, score=score, threshold=threshold,
                       false_positive_rate=false_positive_rate, map=map)


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("encode", "images", _encode,
              "Posterior parameters per image (mu, sigma for the Gaussian kind) and optional samples z ~ q(z|x)."),
    Operation("decode", "z", _decode, "The means of p(x|z) per pixel, in [0, 1], for each latent vector."),
    Operation("sample", "n", _sample, "Ancestral samples: z ~ p(z) and the decoder's means p(x|z)."),
    Operation("reconstruct", "images", _reconstruct, "Decoder means at the posterior mean of each image."),
    Operation("elbo", "images", _elbo,
              "Per-image ELBO terms from one posterior sample: elbo = log_px − beta·kl.", _finish_elbo),
    Operation("iwae", "images", _iwae,
              "The importance-weighted bound L_K per image (Burda et al. 2015, eq. 8) and bits per dimension.",
              _finish_iwae),
    Operation("classify", "images", _classify, "Class probabilities and labels per image."),
    Operation("anomaly", "images", _anomaly,
              "Anomaly scores, percentiles against held-out normal data, flags at a threshold, and per-pixel maps.",
              _finish_anomaly),
)}


def run_batch(ck: Checkpoint, operation: str, calls: list[Call]) -> list[Outputs]:
    """One forward pass over every call's rows; returns each call's own outputs, in order.

    All calls must share `key`. Outputs are numpy arrays with the call's rows first.
    """
    op = OPERATIONS[operation]
    key = calls[0].key
    assert all(c.key == key for c in calls), "calls with different keys cannot share a pass"
    device = next(ck.model.parameters()).device
    sizes = [c.rows for c in calls]
    noise = RowwiseNoise([c.seed for c in calls], sizes)
    labels = None
    if calls[0].labels is not None:
        labels = torch.from_numpy(np.concatenate([c.labels for c in calls])).to(device)
    if op.input == "n":
        x = sum(sizes)
    else:
        x = torch.from_numpy(np.concatenate([c.inputs for c in calls])).to(device)
    # no_grad, not inference_mode: some scores (likelihood regret) optimise inside with enable_grad.
    try:
        with torch.no_grad():
            out = op.forward(ck, x, labels, noise, **dict(key))
    except ValueError as error:
        # The library's way of saying an input does not fit the model, e.g. a categorical latent off
        # the simplex: the client's mistake. (The batcher reruns a failed pass call by call, so
        # only the request at fault gets this.)
        raise BadInputError(f"{operation}: {error}") from None
    arrays = {name: value.detach().cpu().numpy() for name, value in out.items()}
    for name, value in arrays.items():
        assert value.shape[0] == sum(sizes), f"{operation} output {name} has {value.shape[0]} rows, not {sum(sizes)}"
    bounds = np.cumsum([0, *sizes])
    return [{name: value[a:b] for name, value in arrays.items()} for a, b in zip(bounds[:-1], bounds[1:])]
