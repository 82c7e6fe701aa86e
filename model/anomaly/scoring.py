"""Many anomaly scores of a whole split, in batches, with −L_K(x) computed once for all that build on
it; and the calibration of every available score on held-out normal images."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from model.core.preprocess import scale
from model.anomaly.base import require
from model.anomaly.calibration import AnomalyCalibration, F1Threshold, MapCalibration, ScoreCalibration
from model.anomaly.maps import available_maps, map_params, maps_of_split
from model.anomaly.combined import standardisation, standardise
from model.anomaly.registry import NLL_SCORES, SCORES, available_scores, default_score
from model.data.base import Split
from model.core.device import device_of
from model.core.noise import Noise
from model.core.objectives import iwae_bound


@torch.no_grad()
def score_split(model: nn.Module, x: Tensor, names, *, k: int, noise: Noise | None = None,
                companions: Mapping[str, nn.Module] | None = None, batch_size: int = 200,
                params: Mapping[str, dict] | None = None,
                progress: Callable[[int], object] | None = None) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Several scores of the images x (N, ...), in batches, with −L_K(x) computed once for all.

    The scores built on −L_K (those with a `correction`, and `iwae` itself) add their correction to
    one shared −L_K, so they see the same importance samples and cost one bound between them; the
    other scores call their function with `params[name]` as extra keywords.

    Args:
        progress: called with the number of images after each batch of each pass (a bar's `update`).
    Returns:
        ({name: (N,) CPU tensor}, {name: seconds}); a score built on −L_K counts its seconds too.
    """
    unknown = sorted(set(names) - set(SCORES))
    if unknown:
        raise ValueError(f"unknown anomaly scores {unknown}; expected some of {sorted(SCORES)}")
    for name in names:  # a missing companion fails now, not after the other scores' passes
        for need in SCORES[name].needs:
            require(companions, need, name)
    device = device_of(model)
    params = params or {}
    values: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}

    def timed(name, fn):
        started = time.perf_counter()
        out = []
        for i in range(0, x.shape[0], batch_size):
            out.append(fn(scale(x[i:i + batch_size].to(device))).cpu())
            if progress is not None:
                progress(out[-1].shape[0])
        values[name] = torch.cat(out)
        seconds[name] = time.perf_counter() - started

    shared = [name for name in names if name in NLL_SCORES]
    for name in names:
        if name not in shared:
            timed(name, lambda xb, score=SCORES[name]: score(model, xb, k=k, noise=noise, companions=companions,
                                                             **params.get(name, {})))
    if shared:
        timed("iwae", lambda xb: -iwae_bound(model, xb, k, noise=noise))
    for name in shared:
        if name != "iwae":
            timed(name, lambda xb, fix=SCORES[name].correction: fix(model, xb, k=k, noise=noise, companions=companions))
            values[name] = values["iwae"] + values[name]
            seconds[name] += seconds["iwae"]
    return {name: values[name] for name in names}, {name: round(seconds[name], 2) for name in names}


MAP_IMAGES = 1000  # normal validation images whose map pixels calibrate each map (at most)


def calibrate(model: nn.Module, normal: Split, k: int, *, companions: dict | None = None,
              dataset: str | None = None, progress: bool = False, labelled: Split | None = None,
              map_images: int = MAP_IMAGES) -> AnomalyCalibration:
    """Quantiles of every anomaly score available to the model on held-out normal images; with
    `labelled` validation images (y = 1 anomalous), each score's F1-maximising threshold on them;
    and the quantiles of the pixels of every anomaly map (`model.anomaly.maps`) of normal images.

    The default is the benchmark's best available score for `dataset` (`model.anomaly.registry.default_score`).
    A score's stored parameters are those it uses (`k` for the scores built on L_K; a derived score's
    standardisation of its components). A derived score is computed from its components' values.
    """
    names = available_scores(model, companions)
    derived = [name for name in names if SCORES[name].components]
    basic = [name for name in names if name not in derived]
    with tqdm(desc=f"calibrating {len(names)} anomaly scores", unit="img", disable=not progress,
              leave=False) as bar:
        values, _ = score_split(model, normal.x, basic, k=k, companions=companions, batch_size=100,
                                progress=bar.update)  # −L_K once for all
    calibrations = {name: ScoreCalibration.fit(name, values[name].numpy(), {"k": k} if SCORES[name].uses_k else {})
                    for name in basic}
    for name in derived:
        parts = SCORES[name].components
        params = {**standardisation({part: calibrations[part] for part in parts}),
                  **({"k": k} if SCORES[name].uses_k else {})}
        value = standardise({part: values[part] for part in parts}, params)
        calibrations[name] = ScoreCalibration.fit(name, value.numpy(), params)
    f1, aurocs = {}, {}
    default = default_score(dataset, names)
    if labelled is not None:
        from sklearn.metrics import roc_auc_score  # training's dependency, not the service's

        scored = score_calibrated(model, labelled.x, calibrations, names, companions=companions)
        anomalous = (labelled.y.cpu() != 0).numpy()
        f1 = {name: F1Threshold.fit(name, scored[name].numpy(), anomalous) for name in names}
        aurocs = {name: float(roc_auc_score(anomalous, scored[name].numpy())) for name in names}
        # The user's own anomalies choose the default; ties go to the benchmark's order.
        order = [default, *[n for n in names if n != default]]
        default = max(order, key=lambda name: (round(aurocs[name], 6), -order.index(name)))
    maps = {}
    x = normal.x[:map_images]
    for name in available_maps(model):
        params = map_params(name, model.input_shape)
        torch.manual_seed(0)  # the nll map's posterior samples: the same calibration every time
        maps[name] = MapCalibration.fit(name, maps_of_split(model, x, name=name, **params).numpy(), params)
    return AnomalyCalibration(calibrations, default, f1, maps, aurocs)


def score_calibrated(model: nn.Module, x: Tensor, calibrations: Mapping[str, ScoreCalibration], names, *,
                     companions: Mapping[str, nn.Module] | None = None, noise: Noise | None = None,
                     batch_size: int = 100) -> dict[str, Tensor]:
    """The scores `names` of images x computed as they were calibrated (each with its stored
    parameters; a derived score from its components' values, standardised as calibrated)."""
    derived = [name for name in names if SCORES[name].components]
    basic = sorted({*[n for n in names if n not in derived], *[p for n in derived for p in SCORES[n].components]})
    ks = {calibrations[name].params["k"] for name in basic if "k" in calibrations[name].params}
    if len(ks) > 1:
        raise ValueError(f"the scores {basic} were calibrated with different K {sorted(ks)}; expected one")
    k = ks.pop() if ks else 1
    values, _ = score_split(model, x, basic, k=k, noise=noise, companions=companions, batch_size=batch_size)
    for name in derived:
        values[name] = standardise({part: values[part] for part in SCORES[name].components}, calibrations[name].params)
    return {name: values[name] for name in names}
