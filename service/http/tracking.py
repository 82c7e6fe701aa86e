"""`RequestTracking`: the ASGI middleware that times every request and labels it with the model,
operation and status; it also hands each request its `ArrivalGate` ticket (see service.core.batching).
"""

from __future__ import annotations

import time

from service.core.batching import CURRENT_TICKET, ArrivalGate
from service.core.metrics import Metrics


def route_template(scope: dict) -> str | None:
    """The path template of the route that handled the request, or None if none matched.

    FastAPI's own routes put themselves in the scope; plain Starlette routes (the OpenAPI document)
    and mounts (the docs' assets) leave only their endpoint, which names them among the router's routes.
    """
    route = scope.get("route")
    if route is not None:
        return route.path
    endpoint, router = scope.get("endpoint"), scope.get("router")
    if endpoint is None or router is None:
        return None
    for route in router.routes:
        if getattr(route, "endpoint", None) is endpoint or getattr(route, "app", None) is endpoint:
            return route.path
    return None


def route_labels(scope: dict, known_models) -> tuple[str, str]:
    """(model, operation) of a handled request: from the matched route, never from raw paths."""
    params = scope.get("path_params") or {}
    template = route_template(scope)
    if template is None:
        return "", "unmatched"
    if "model" in params:  # OIP: /v2/models/{model}/... with model = "{name}.{operation}"
        name, _, operation = str(params["model"]).rpartition(".")
        if name in known_models:
            return name, f"v2:{operation}" if template.endswith("/infer") else template
        return "unknown", template
    if "name" in params:
        name = str(params["name"])
        operation = "describe" if template.endswith("}") else template.rsplit("/", 1)[-1]
        return (name if name in known_models else "unknown"), operation
    return "", template


class RequestTracking:
    """ASGI middleware: an arrival ticket per request, and its count and latency by route labels."""

    def __init__(self, app, metrics: Metrics, gate: ArrivalGate, known_models):
        self.app = app
        self.metrics = metrics
        self.gate = gate
        self.known_models = known_models  # a callable returning the current model names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        ticket = self.gate.enter()
        token = CURRENT_TICKET.set(ticket)

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.in_flight.dec()
            ticket.close()
            CURRENT_TICKET.reset(token)
            model, operation = route_labels(scope, self.known_models())
            labels = (model, operation, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
