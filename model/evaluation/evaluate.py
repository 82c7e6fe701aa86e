"""Evaluation of a trained model: test bounds, active units, the latent classifier and calibration.

The image-by-image passes over the test split (`image_passes`: ELBO, L_K, reconstructions, features)
are what an evaluation spends its time on; under torchrun every process computes them on its shard
and the sums and per-image values are reduced across the processes (`model.training.distributed`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from model.core.preprocess import scale
from model.anomaly.calibration import DEFAULT_FALSE_POSITIVE_RATE, AnomalyCalibration
from model.anomaly.scoring import calibrate
from model.evaluation.classifier import fit_logistic_regression
from model.nets.classifier import LinearSoftmaxClassifier
from model.data.base import DataBundle, Split
from model.data.batches import eval_batches
from model.data.transforms import labelled
from model.kinds.registry import get_kind
from model.core.device import device_of
from model.core.objectives import bits_per_dim, iwae_bound
from model.core.precision import autocast
from model.training.distributed import SINGLE, Processes

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015, section 5.2
CLASSIFIER_MAX_TRAIN = 10_000  # logistic regression on more images buys little accuracy for its time


@torch.no_grad()
def split_elbo(model: nn.Module, split: Split, kl: str = "sampled", batch_size: int = 1000,
               processes: Processes = SINGLE) -> dict[str, float]:
    """Mean ELBO, log p(x|z) and KL over a split (nats per image); each of `processes` sums its shard."""
    totals = {"elbo": 0.0, "log_px": 0.0, "kl": 0.0}
    device = device_of(model)
    for x, _ in eval_batches(processes.shard(split), batch_size):
        terms = model.elbo_terms(x.to(device), kl=kl)
        totals["elbo"] += terms.elbo.sum().item()
        totals["log_px"] += terms.log_px.sum().item()
        totals["kl"] += terms.kl.sum().item()
    totals = processes.sum(totals)
    return {k: v / len(split) for k, v in totals.items()}


@torch.no_grad()
def split_iwae(model: nn.Module, split: Split, k: int, batch_size: int = 100, progress: bool = False,
               processes: Processes = SINGLE) -> Tensor:
    """L_K per image over a split, on the CPU (N,); `progress` shows a bar over the images.

    Each of `processes` bounds its shard; every process gets all N values, in the split's order.
    """
    device = device_of(model)
    part = processes.shard(split)
    out = [torch.empty(0)]  # an empty shard still gathers
    with tqdm(total=len(part), desc=f"test L_{k}", unit="img", disable=not progress, leave=False) as bar:
        for x, _ in eval_batches(part, batch_size):
            out.append(iwae_bound(model, x.to(device), k).cpu())
            bar.update(x.shape[0])
    return processes.gather(torch.cat(out))


@torch.no_grad()
def split_features(model: nn.Module, split: Split, batch_size: int = 1000, processes: Processes = SINGLE) -> Tensor:
    """Each image's latent features (N, F), on the CPU; each of `processes` encodes its shard."""
    device = device_of(model)
    part = processes.shard(split)
    features = [model.features(x.to(device)).cpu() for x, _ in eval_batches(part, batch_size)]
    if not features:  # an empty shard: no image, but the features' width for the gather
        features = [model.features(scale(split.x[:1]).to(device)).cpu()[:0]]
    return processes.gather(torch.cat(features))


def active_units(features: Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> dict:
    """Units whose posterior mean varies across data: Cov_x(E_q[u]) > threshold (Burda et al. 2015)."""
    variance = features.var(0)
    return {"count": int((variance > threshold).sum()), "of": int(features.shape[1]),
            "variance": [round(float(v), 5) for v in variance]}


@torch.no_grad()
def reconstruction_errors(model: nn.Module, split: Split, batch_size: int = 1000,
                          processes: Processes = SINGLE) -> Tensor:
    """Mean squared pixel error of the decoder mean at the posterior mean, per image (N,); each of
    `processes` reconstructs its shard."""
    device = device_of(model)
    out = [torch.empty(0)]
    for x, _ in eval_batches(processes.shard(split), batch_size):
        x = x.to(device)
        out.append((model.reconstruct(x) - x).pow(2).flatten(1).mean(1).cpu())
    return processes.gather(torch.cat(out))


@dataclass(frozen=True)
class ImagePasses:
    """What `evaluate` reads from passes over every test image: the costly part of an evaluation."""

    elbo: dict[str, float]  # mean ELBO, log p(x|z) and KL (nats per image)
    log_px: Tensor  # L_K per image (N,)
    reconstruction: Tensor  # squared error of the reconstruction per image (N,)
    features: Tensor  # latent features per image (N, F), for the active units
    seconds: float


def image_passes(model: nn.Module, test: Split, *, k: int, kl: str = "sampled", processes: Processes = SINGLE,
                 progress: bool = False, precision: str = "fp32") -> ImagePasses:
    """The test split's ELBO, L_K, reconstruction errors and features, with the RNG as it is.

    Each of `processes` computes its shard; every process gets the whole result (seed each process's
    RNG apart beforehand, or they all draw the same posterior samples for different images).
    """
    started = time.perf_counter()
    model.eval()
    with autocast(precision, device_of(model)):  # the networks' products; every sum stays fp32
        elbo = split_elbo(model, test, kl, processes=processes)
        log_px = split_iwae(model, test, k, progress=progress, processes=processes)
        recon = reconstruction_errors(model, test, processes=processes)
        features = split_features(model, test, processes=processes)
    return ImagePasses(elbo, log_px, recon, features, time.perf_counter() - started)


def fit_classifiers(model: nn.Module, data: DataBundle, seed: int = 0) -> tuple[LinearSoftmaxClassifier, dict]:
    """Exercise 2.4: logistic regression on encoder means, next to the same on raw pixels.

    Only training images with a known label are used (all of them unless `--labels N` hid some).
    """
    train = labelled(data.train)
    if len(train) > CLASSIFIER_MAX_TRAIN:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:CLASSIFIER_MAX_TRAIN]
        train = Split(train.x[pick.to(train.x.device)], train.y[pick.to(train.y.device)])
    y_train, y_test = train.y.cpu().numpy(), data.test.y.cpu().numpy()
    if len(np.unique(y_train)) < 2:
        return None, {"skipped": "a classifier needs at least two classes in the training data"}
    latent = fit_logistic_regression(split_features(model, train).numpy(), y_train, seed=seed)
    latent_acc = float((latent.predict(split_features(model, data.test)).numpy() == y_test).mean())
    pixels_train = scale(train.x).flatten(1).cpu().numpy()
    pixels = fit_logistic_regression(pixels_train, y_train, max_iter=200, seed=seed)
    pixel_acc = float((pixels.predict(scale(data.test.x).flatten(1).cpu()).numpy() == y_test).mean())
    summary = {"latent_accuracy": latent_acc, "pixel_accuracy": pixel_acc, "train_images": len(train),
               "classes": [int(c) for c in latent.classes]}
    return latent, summary


def evaluate(model: nn.Module, data: DataBundle, *, k: int, calibration_k: int, kl: str = "sampled",
             seed: int = 0, companions: dict | None = None, dataset: str | None = None,
             progress: bool = False, tested: ImagePasses | None = None, precision: str = "fp32",
             ) -> tuple[dict, LinearSoftmaxClassifier | None, AnomalyCalibration]:
    """Every number of evaluation.json, plus the classifier and calibration it reports on.

    `companions` (e.g. the background model) and `dataset` go to `calibrate`; `progress` shows
    bars for the long parts (the test L_K and the calibration). `tested`: the test split's
    `image_passes` when it was computed beforehand (by several processes); its seconds count here.
    """
    started = time.perf_counter() - (tested.seconds if tested is not None else 0.0)
    model.eval()
    torch.manual_seed(seed)
    n_pixels = math.prod(model.input_shape)
    if tested is None:
        tested = image_passes(model, data.test, k=k, kl=kl, progress=progress, precision=precision)
    test, log_px, recon = tested.elbo, tested.log_px, tested.reconstruction
    iwae = float(log_px.mean())
    per_class = {
        str(int(c)): {"images": int((data.test.y.cpu() == c).sum()),
                      "reconstruction_mse": float(recon[data.test.y.cpu() == c].mean()),
                      "iwae_log_px": float(log_px[data.test.y.cpu() == c].mean())}
        for c in torch.unique(data.test.y.cpu())
    }
    classifier, classifier_summary = fit_classifiers(model, data, seed)
    kind_evaluation = get_kind(model.kind).evaluate  # numbers only this kind has (e.g. M2's own error)
    calibration = calibrate(model, data.validation, calibration_k, companions=companions, dataset=dataset,
                            progress=progress, labelled=data.labelled_validation)
    default = calibration.scores[calibration.default]
    evaluation = {
        "test": {**test, "images": len(data.test)},
        "iwae": {"k": k, "log_px": iwae, "nll": -iwae, "bits_per_dim": bits_per_dim(iwae, n_pixels)},
        "active_units": active_units(tested.features),
        "reconstruction_mse": float(recon.mean()),
        "per_class": per_class,
        "classifier": classifier_summary,
        "calibration": {"score": default.score, "k": calibration_k, "images": default.n,
                        "false_positive_rate": DEFAULT_FALSE_POSITIVE_RATE,
                        "threshold": default.threshold(DEFAULT_FALSE_POSITIVE_RATE),
                        "default_chosen_by": "AUROC on the labelled validation images" if calibration.validation_auroc
                        else "the benchmark's ranking (model/anomaly/rankings.json)",
                        **({"validation_auroc": calibration.validation_auroc} if calibration.validation_auroc else {}),
                        **({"f1": calibration.f1[default.score].to_dict()} if default.score in calibration.f1 else {}),
                        "maps": sorted(calibration.maps)},
        "binarize": data.binarize,
        "likelihood": model.likelihood.name,
        "data": data.info,
        **({"kind": kind_evaluation(model, data.test.x, data.test.y, data.train.y)}
           if kind_evaluation is not None else {}),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return evaluation, classifier, calibration
