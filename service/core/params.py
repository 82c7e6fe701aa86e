"""The parameters of each operation, shared by both transports (REST bodies and OIP `parameters`).

pydantic models without FastAPI: an operation's parameters are validated the same way whichever
transport carried them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Seed = Annotated[int | None, Field(None, ge=0, le=2**63 - 1,
                                   description="seed of this request's noise: same seed, same answer, batched or not")]


class StrictModel(BaseModel):
    """Unknown fields are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")



class NoParams(StrictModel):
    """Operations without parameters."""



class EncodeParams(StrictModel):
    num_samples: int = Field(0, ge=0, description="posterior samples z ~ q(z|x) to draw per image")
    seed: Seed



class SampleParams(StrictModel):
    seed: Seed



class ElboParams(StrictModel):
    beta: float = Field(1.0, ge=0, allow_inf_nan=False, description="weight of the KL term in elbo")
    seed: Seed



class IwaeParams(StrictModel):
    k: int | None = Field(None, ge=1, description="importance samples (default VAE_DEFAULT_K, at most VAE_MAX_K)")
    seed: Seed



class AnomalyParams(StrictModel):
    false_positive_rate: float | None = Field(
        None, gt=0, lt=1, description="share of normal images to flag; giving it chooses that threshold "
                                      "(default 0.01 where no F1 threshold is used)")
    threshold: Literal["f1", "false_positive_rate"] | None = Field(
        None, description="which threshold flags images: f1, the one maximising F1 on the run's labelled "
                          "validation images; false_positive_rate, the quantile of normal images. Default: f1 "
                          "where the run has it and false_positive_rate is not given")
    score: str | None = Field(None, description="a calibrated score (GET /models/{name}); default: the model's")
    maps: bool = Field(False, description="also return a per-pixel anomaly map of each image, as percentiles "
                                          "of the pixels of held-out normal images")
    map: str | None = Field(None, description="which anomaly map (GET /models/{name} lists the calibrated ones); "
                                              "default nll")
    seed: Seed


PARAMS: dict[str, type[StrictModel]] = {
    "encode": EncodeParams, "decode": NoParams, "sample": SampleParams, "reconstruct": NoParams,
    "elbo": ElboParams, "iwae": IwaeParams, "classify": NoParams, "anomaly": AnomalyParams,
}
