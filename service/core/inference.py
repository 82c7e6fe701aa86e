"""Running an operation for one request: check its parameters, batch it, finish its outputs.

REST routes and OIP routes both come here with decoded inputs, so limits, defaults and batching
behave the same whichever protocol a client speaks.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model.anomaly.predict import NoMapsError, choose_map
from model.anomaly.registry import SCORES, unavailable_reason
from service.core.batching import ArrivalGate, Batcher
from service.core.errors import BadInputError, NotReadyError, UnsupportedError, plural
from service.core.metrics import Metrics
from service.core.operations import OPERATIONS, Call, Outputs, run_batch
from service.core.registry import ModelEntry, Registry
from service.settings import Settings


class Inference:
    """Batchers per (model, operation) over one thread pool, and the per-request rules."""

    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics, gate: ArrivalGate):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.gate = gate
        self.executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="inference")
        # (model, operation, entry generation) -> its batcher: a replaced model's pass never serves its successor
        self.batchers: dict[tuple[str, str, int], Batcher] = {}
        self.closing = False

    # --- the request's parameters -----------------------------------------------------------

    def anomaly_score(self, entry: ModelEntry, score: str | None) -> str:
        available = entry.anomaly_scores()
        default = entry.checkpoint.calibration.default
        name = score if score is not None else (default if default in available else available[0])
        if name not in available:
            why = unavailable_reason(name, entry.checkpoint.model, entry.checkpoint.companions) \
                if name in SCORES else None
            raise BadInputError(f"score: expected one of the calibrated scores {available}, got {name!r}"
                                + (f", which this model cannot compute: {why}" if why else ""))
        return name

    def anomaly_map(self, entry: ModelEntry, name: str | None) -> str:
        """The calibrated anomaly map a request asks for (default: `model.anomaly.maps.default_map`)."""
        try:
            return choose_map(entry.checkpoint.calibration, name)
        except NoMapsError as error:
            raise UnsupportedError(f"maps: model {entry.name!r}: {error}") from None
        except ValueError as error:
            raise BadInputError(str(error)) from None

    def key(self, entry: ModelEntry, operation: str, params: dict) -> tuple:
        """The settings of the forward pass; only requests with equal keys share a pass."""
        s = self.settings
        if operation == "encode":
            num_samples = params.get("num_samples") or 0
            if num_samples > s.max_num_samples:
                raise BadInputError(f"num_samples: expected at most {s.max_num_samples} (VAE_MAX_NUM_SAMPLES), "
                                    f"got {num_samples}")
            return (("num_samples", num_samples),)
        if operation == "iwae":
            k = params.get("k") or s.default_k
            if k > s.max_k:
                raise BadInputError(f"k: expected at most {s.max_k} importance samples (VAE_MAX_K), got {k}")
            return (("k", k), ("chunk_size", s.iwae_chunk))
        if operation == "anomaly":
            score = self.anomaly_score(entry, params.get("score"))
            # The score is computed exactly as it was calibrated (e.g. with the calibration's K).
            calibration_params = entry.checkpoint.calibration.scores[score].params
            key = (("score", score), ("params", tuple(sorted(calibration_params.items()))))
            name = self.anomaly_map(entry, params.get("map")) if params.get("maps") else None
            if name is not None:  # so is the map: with the sigma and samples it was calibrated with
                map_params = entry.checkpoint.calibration.maps[name].params
                key += (("map", name), ("map_params", tuple(sorted(map_params.items()))))
            return key
        return ()

    def labels(self, entry: ModelEntry, operation: str, labels, rows: int) -> np.ndarray | None:
        """Class labels y for conditional kinds' decode and sample, one per row."""
        if labels is None:
            return None
        if operation not in ("decode", "sample") or not entry.checkpoint.model.capabilities.conditional:
            raise UnsupportedError(f"y: model {entry.name!r} (kind {entry.kind!r}) takes no class label "
                                   f"for {operation!r}")
        try:
            array = np.asarray(labels, dtype=np.int64).reshape(-1)
        except OverflowError:
            raise BadInputError(f"y: expected class labels that fit in 64 bits, got {labels}") from None
        if array.shape[0] == 1 and rows > 1:
            array = np.repeat(array, rows)
        if array.shape[0] != rows:
            raise BadInputError(f"y: expected one class label or {rows} (one per row), got {array.shape[0]}")
        return array

    def call(self, entry: ModelEntry, operation: str, *, inputs: np.ndarray | None = None, n: int | None = None,
             seed: int | None = None, labels=None, **params) -> Call:
        rows = inputs.shape[0] if inputs is not None else int(n)
        if operation == "sample" and rows > self.settings.max_images:
            raise BadInputError(f"n: expected at most {plural(self.settings.max_images, 'sample')} per request "
                                f"(VAE_MAX_IMAGES), got {rows}")
        return Call(rows=rows, inputs=inputs, labels=self.labels(entry, operation, labels, rows), seed=seed,
                    key=self.key(entry, operation, params))

    # --- running it -------------------------------------------------------------------------

    def _batcher(self, entry: ModelEntry, operation: str) -> Batcher:
        key = (entry.name, operation, entry.generation)
        batcher = self.batchers.get(key)
        if batcher is None:
            checkpoint = entry.checkpoint
            s = self.settings
            batcher = Batcher(
                f"{entry.name}.{operation}", lambda calls: run_batch(checkpoint, operation, calls),
                executor=self.executor, gate=self.gate, max_batch_size=s.max_batch_size,
                max_wait_s=s.max_wait_ms / 1000, max_queue=s.max_queue,
                observe=self.metrics.observer(entry.name, operation))
            self.batchers[key] = batcher
        return batcher

    async def run(self, entry: ModelEntry, operation: str, *, finish: dict | None = None, **request) -> Outputs:
        """Run `operation` of the ready model `entry` for one request and return its outputs (numpy, rows first).

        The request is answered by `entry` even if a newer copy of its run replaces it meanwhile: a
        request is checked against one model and answered by the same one.

        Args:
            entry: from `Registry.ready_model`.
            finish: per-request parameters applied after the pass (beta, false_positive_rate).
            request: inputs= / n=, seed=, labels= and the pass parameters (k, num_samples, score).
        """
        if self.closing:
            raise NotReadyError("the server is shutting down")
        self.registry.check_operation(entry, operation)
        call = self.call(entry, operation, **request)
        # No await between finding the batcher and queueing the call: `retire_stale` cannot close it in between.
        outputs = await self._batcher(entry, operation).submit(call)
        finish = dict(finish or {})
        if operation == "anomaly":
            key = dict(call.key)
            finish["score"], finish["map"] = key["score"], key.get("map")
        return OPERATIONS[operation].finish(entry.checkpoint, outputs, **finish)

    def warm_up(self, entry: ModelEntry, operation: str) -> Outputs:
        """One synthetic request through the same path (minus the queue), for the registry."""
        op = OPERATIONS[operation]
        inputs, labels = None, None
        if op.input == "images":
            inputs = np.full((1, *entry.input_shape), 0.5, np.float32)
        elif op.input == "z":
            # A latent the model itself produced is valid whatever its layout (e.g. one-hot blocks).
            (prior,) = run_batch(entry.checkpoint, "sample", [self.call(entry, "sample", n=1, seed=0)])
            inputs = prior["z"]
            if "y" in prior and entry.checkpoint.model.capabilities.conditional:
                labels = prior["y"]
        params = {"encode": {"num_samples": 1}, "iwae": {"k": 2}}.get(operation, {})
        if operation == "anomaly" and entry.checkpoint.calibration.maps:
            params = {"maps": True}  # warms the map's path too, and declares its output to OIP clients
        call = self.call(entry, operation, inputs=inputs, n=1, seed=0, labels=labels, **params)
        (outputs,) = run_batch(entry.checkpoint, operation, [call])
        key = dict(call.key)
        finish = {"anomaly": {"score": key.get("score"), "map": key.get("map")}}.get(operation, {})
        return OPERATIONS[operation].finish(entry.checkpoint, outputs, **finish)

    async def retire_stale(self) -> None:
        """Close the idle batchers of models no longer served (replaced, removed or unloaded).

        A busy one is left for the next call. A request still holding a retired model gets a fresh
        batcher for it (`_batcher`), which a later call retires in turn: no request is refused.
        """
        current = self.registry.snapshot.generations
        for key, batcher in list(self.batchers.items()):
            if key[2] not in current and batcher.idle and self.batchers.get(key) is batcher:
                del self.batchers[key]
                await batcher.close()

    async def close(self) -> None:
        """Stop taking requests, let every queued and running pass finish, stop the threads."""
        self.closing = True
        for batcher in self.batchers.values():
            await batcher.close()
        self.executor.shutdown(wait=True)
