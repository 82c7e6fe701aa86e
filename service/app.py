"""`create_app(settings)`: the FastAPI app, its lifespan (load and warm up models; drain on exit)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

import torch
from fastapi import Depends, FastAPI, Response
from fastapi.responses import PlainTextResponse

from service.http import ui
from service.http.auth import require_token
from service.http.docs import install_docs
from service.http.errors import error_responses, install_error_handlers
from service.http.limits import BodySizeLimit
from service.http.tracking import RequestTracking
from service.oip import repository, routes as oip
from service.rest import routes
from service.settings import Settings
from service.state import Service, ServiceDep

log = logging.getLogger("service")

DESCRIPTION = """
Serves every trained run directory under `VAE_MODEL_DIR`: encode, decode, sample, reconstruct,
ELBO, IWAE, classify and anomaly scores, over REST (`/models/{name}/{operation}`) and the Open
Inference Protocol V2 (`/v2/models/{name}.{operation}/infer`). Concurrent requests for one model
and operation share a forward pass. Errors are `{"error": "..."}`.
"""

METRICS_EXAMPLE = """\
# HELP vae_requests_total HTTP requests handled
# TYPE vae_requests_total counter
vae_requests_total{model="default",operation="elbo",status="200"} 42.0
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Models load when the app starts (its lifespan), not here."""
    settings = settings or Settings()
    logging.getLogger("service").setLevel(settings.log_level.upper())
    service = Service.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        await service.repository.poll_now()  # every run directory there is, loaded and warmed up
        # Everything loaded so far (torch, the models, the app) lives as long as the process. Moving
        # it out of the collector's sight makes a full collection take milliseconds instead of the
        # ~0.4 s measured with it in view: a pause every request in flight would wait out.
        gc.collect()
        gc.freeze()
        ok, reason = service.registry.readiness()
        (log.info if ok else log.warning)("%s", reason)
        # Run directories added, replaced or removed from now on (service.core.repository).
        watcher = asyncio.create_task(service.repository.watch(), name="model repository") \
            if settings.poll_interval_s > 0 else None
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await service.repository.close()  # a load under way finishes first; none starts
        await service.inference.close()  # uvicorn has already let the requests in flight finish
        gc.unfreeze()  # let interpreter shutdown collect as usual (extension modules check for leaks)
        log.info("batchers drained; shutting down")

    app = FastAPI(title="vae-lab model server", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # install_docs serves /docs without a CDN
    app.state.service = service
    install_error_handlers(app)
    install_docs(app)
    app.include_router(routes.health)
    app.include_router(routes.models)
    app.include_router(oip.router)
    app.include_router(oip.models)
    app.include_router(repository.router)
    if settings.benchmark_endpoints:
        app.include_router(routes.benchmark)
    if settings.ui:
        app.include_router(ui.router)

    @app.get("/metrics", tags=["health"], dependencies=[Depends(require_token)], response_class=PlainTextResponse,
             summary="Prometheus metrics: requests, latency, queue time, batch sizes",
             responses={200: {"content": {"text/plain": {"example": METRICS_EXAMPLE}}}, **error_responses(401)})
    async def metrics(service: ServiceDep) -> Response:
        """Prometheus text format: `vae_requests_total` and `vae_request_seconds` by model, operation
        and status; queue time, batch time and batch sizes by model and operation; requests in flight;
        models ready and failed."""
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestTracking, metrics=service.metrics, gate=service.gate,
                       known_models=lambda: service.registry.models)
    return app
