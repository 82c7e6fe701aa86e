"""The anomaly scores a run can be scored with (`score=` in the service, `--scores` in the bench).

Add a score: its function in a module of this package (signature in `model.anomaly.base`), and
one `Score(...)` line here declaring what it uses and needs. Calibration, the bench, the service's
`score` parameter and the OIP metadata all read this table.

The default score of a run is the first available score of its data set's ranking, which
`vae bench anomaly --write-rankings` measures and writes to `rankings.json` beside this module
(data, not code); a data set without a ranking gets the first available of `UNRANKED`. A run with
labelled anomalous validation images instead defaults to the score with the best AUROC on them
(`model.anomaly.scoring.calibrate`): the user's own anomalies say which score sees them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache, partial
from pathlib import Path

from torch import nn

from model.anomaly import combined, likelihood, maps, reconstruction, regret
from model.anomaly.base import BACKGROUND, Score

SCORES: dict[str, Score] = {score.name: score for score in (
    Score("iwae", likelihood.negative_iwae, "−L_K(x), the importance-weighted estimate of −log p(x)", uses_k=True),
    Score("elbo", likelihood.negative_elbo, "−ELBO(x) from one posterior sample"),
    Score("reconstruction", reconstruction.reconstruction_error,
          "squared error of the decoder mean at the posterior mean"),
    Score("relative_reconstruction", reconstruction.relative_reconstruction,
          "root-grey-level reconstruction error over the image's edge energy"),
    Score("complexity", likelihood.input_complexity, "−L_K(x) − L(x)·ln 2, L(x) a DEFLATE code length "
          "(Serrà et al. 2020)", uses_k=True, correction=likelihood.complexity_correction),
    Score("excess", likelihood.excess, "−L_K(x) − Σ H(x_i), the likelihood in excess of the input's entropy",
          uses_k=True, correction=likelihood.excess_correction, likelihoods=("bernoulli",)),
    Score("likelihood_ratio", likelihood.likelihood_ratio, "−L_K(x) + L_K^bg(x) against a background model "
          "(Ren et al. 2019)", uses_k=True, needs=(BACKGROUND,), correction=likelihood.likelihood_ratio_correction),
    Score("likelihood_regret", regret.likelihood_regret, "ELBO gained by optimising the posterior for x alone "
          "(Xiao et al. 2020)", requires="gaussian_latent"),
    Score("peak", maps.peak, "the largest value of the image's anomaly map (excess for the Bernoulli likelihood, "
          "else nll): where a defect is, not how unlikely the whole image is"),
)}
SCORES["combined"] = Score(
    "combined", partial(combined.combined, SCORES), "the largest of the relative reconstruction error, complexity "
    "and excess, each standardised by its median and IQR on held-out normal images", uses_k=True,
    components=combined.COMPONENTS)
# The scores built on −L_K(x): `model.anomaly.scoring.score_split` computes the bound once for them.
NLL_SCORES: tuple[str, ...] = ("iwae", *(name for name, score in SCORES.items() if score.correction is not None))
DEFAULT_SCORE = "iwae"
# A data set the benchmark has not ranked (a user's folder) prefers `combined`, the score with the best
# worst case over the OOD families of all three ranked data sets (docs/anomaly.md), then −L_K.
UNRANKED = ("combined", DEFAULT_SCORE)
RANKINGS = Path(__file__).with_name("rankings.json")


def unavailable_reason(name: str, model: nn.Module, companions: Mapping[str, nn.Module] | None = None) -> str | None:
    """Why the score `name` is not available for this model (None when it is), in words."""
    score = SCORES[name]
    for part in score.components:
        reason = unavailable_reason(part, model, companions)
        if reason:
            return f"its component {part!r} is unavailable: {reason}"
    return score.unavailable_reason(model, companions)


def available_scores(model: nn.Module, companions: Mapping[str, nn.Module] | None = None) -> list[str]:
    """The scores that work for this model and whose companions are all present."""
    basic = {name for name, score in SCORES.items() if not score.components and score.available_for(model, companions)}
    return [name for name, score in SCORES.items()
            if (name in basic) or (score.components and set(score.components) <= basic)]


@cache
def rankings(path: Path = RANKINGS) -> dict[str, tuple[str, ...]]:
    """The benchmark's ranking of the scores per data set, best first (see `model.bench.rankings`)."""
    data = json.loads(path.read_text())
    return {dataset: tuple(names) for dataset, names in data["rankings"].items()}


def default_score(dataset: str | None, available: list[str]) -> str:
    """The benchmark's best score for `dataset` among `available` (DEFAULT_SCORE for unranked data)."""
    preferred = rankings().get(dataset, UNRANKED)
    for name in preferred:
        if name in available:
            return name
    raise ValueError(f"none of the preferred scores {list(preferred)} is available; got {available}")
