"""Prometheus metrics, one registry per app: requests, latency, queue time, batch sizes.

`service.http.tracking.RequestTracking` records the HTTP side (requests, latency); `observer`
records the batched passes.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.core.batching import BatchStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "operation", "status")
        self.requests = Counter("vae_requests", "HTTP requests handled", labels, registry=self.registry)
        self.latency = Histogram("vae_request_seconds", "Time from request to response", labels,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Histogram("vae_queue_seconds", "Time a request waited for its forward pass",
                               ("model", "operation"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("vae_batch_seconds", "Duration of one batched forward pass",
                                   ("model", "operation"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("vae_batch_rows", "Rows (images, latents, samples) per forward pass",
                                    ("model", "operation"), buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("vae_batch_requests", "Requests sharing one forward pass",
                                        ("model", "operation"), buckets=BATCH_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("vae_requests_in_flight", "HTTP requests being handled", registry=self.registry)
        self.models_ready = Gauge("vae_models_ready", "Models loaded and warmed up", registry=self.registry)
        self.models_failed = Gauge("vae_models_failed", "Model directories that could not be served",
                                   registry=self.registry)
        # The live model repository (service.core.repository): outcome is loaded (a new copy or version went
        # live), failed (files that could not be served: the copy loaded before, if any, still is), removed, unloaded.
        self.reloads = Counter("vae_model_reloads", "Model directories loaded, failed, removed or unloaded while "
                               "serving", ("model", "outcome"), registry=self.registry)
        self.repository_polls = Counter("vae_repository_polls", "Polls of the model directory",
                                        registry=self.registry)

    def observer(self, model: str, operation: str):
        """A callback for `Batcher(observe=...)` recording one pass."""
        queue = self.queue.labels(model, operation)
        inference = self.inference.labels(model, operation)
        rows = self.batch_rows.labels(model, operation)
        requests = self.batch_requests.labels(model, operation)

        def observe(stats: BatchStats) -> None:
            for seconds in stats.queue_seconds:
                queue.observe(seconds)
            inference.observe(stats.run_seconds)
            rows.observe(stats.rows)
            requests.observe(stats.requests)

        return observe

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
