"""What an anomaly score is: a function of a trained model and a batch, higher meaning more anomalous,
and what it declares about itself (see `model.anomaly.registry` for the list).

Every score has the signature `score(model, x, *, k, noise, companions, **params) -> Tensor (B,)`,
so calibration, the bench and the service treat them alike. `companions` maps names to the extra
models a run directory carries (`Checkpoint.companions`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

BACKGROUND = "background"  # the companion of the likelihood ratio (Ren et al. 2019)

ScoreFn = Callable[..., Tensor]
# What a score built on −L_K(x) adds to it: (model, x, k, noise, companions) -> (B,).
Correction = Callable[..., Tensor]


@dataclass(frozen=True)
class Score:
    """One anomaly score and what it declares.

    uses_k: its value depends on the number of importance samples (calibration stores k).
    needs: companion models it reads (`companions[name]`); unavailable without them.
    requires: a field of `model.kinds.base.Capabilities` the model must have.
    correction: for a score of the form −L_K(x) + correction(x): `model.anomaly.scoring.score_split`
        then computes −L_K once for all such scores, so they see the same importance samples.
    components: the scores a derived score is made of (`combined`); it is available when they all
        are, and calibration computes it from their values.
    likelihoods: the observation models (`model.core.likelihoods`) it is meaningful for (None: any);
        under another it is unavailable rather than wrong.
    """

    name: str
    fn: ScoreFn
    description: str
    uses_k: bool = False
    needs: tuple[str, ...] = ()
    requires: str | None = None
    correction: Correction | None = None
    components: tuple[str, ...] = ()
    likelihoods: tuple[str, ...] | None = None

    def __call__(self, model: nn.Module, x: Tensor, **kwargs) -> Tensor:
        return self.fn(model, x, **kwargs)

    def unavailable_reason(self, model: nn.Module, companions: Mapping[str, nn.Module] | None) -> str | None:
        """Why this score cannot be computed for `model` with these companions (None: it can)."""
        missing = [need for need in self.needs if need not in (companions or {})]
        if missing:
            return f"it needs the companion model {missing[0]!r} (train with --background-epochs > 0)"
        if self.likelihoods is not None and model.likelihood.name not in self.likelihoods:
            return (f"it assumes the {' or '.join(self.likelihoods)} likelihood and this model's is "
                    f"{model.likelihood.name!r}")
        if self.requires is not None and not getattr(model.capabilities, self.requires, False):
            return f"it needs a model with {self.requires.replace('_', ' ')} (kind {model.kind!r} has none)"
        return None

    def available_for(self, model: nn.Module, companions: Mapping[str, nn.Module] | None) -> bool:
        """Whether this score can be computed for `model` with these companions."""
        if any(need not in (companions or {}) for need in self.needs):
            return False
        if self.likelihoods is not None and model.likelihood.name not in self.likelihoods:
            return False
        return self.requires is None or bool(getattr(model.capabilities, self.requires, False))


def require(companions: Mapping[str, nn.Module] | None, name: str, score: str) -> nn.Module:
    """The companion model `name`, or an error saying which score needs it."""
    if not companions or name not in companions:
        raise ValueError(
            f"the {score!r} score needs the companion model {name!r}, got companions {sorted(companions or {})}; "
            f"train with --background-epochs > 0 to fit it"
        )
    return companions[name]
