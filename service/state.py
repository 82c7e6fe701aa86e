"""What one app holds (settings, models, their repository, batchers, metrics) and the dependency handing it to routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.core.batching import ArrivalGate
from service.core.inference import Inference
from service.core.metrics import Metrics
from service.core.registry import Registry
from service.core.repository import ModelRepository
from service.settings import Settings


@dataclass
class Service:
    settings: Settings
    registry: Registry
    inference: Inference
    metrics: Metrics
    gate: ArrivalGate
    repository: ModelRepository

    @classmethod
    def build(cls, settings: Settings) -> "Service":
        registry = Registry(settings)
        metrics = Metrics()
        gate = ArrivalGate()
        inference = Inference(settings, registry, metrics, gate)
        repository = ModelRepository(settings, registry, metrics, inference.warm_up, after_change=inference.retire_stale)
        return cls(settings, registry, inference, metrics, gate, repository)


async def get_service(request: Request) -> Service:
    # async: FastAPI would run a plain function in its thread pool, a thread hop per request.
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
