"""Domain errors carry their HTTP status (`service.http.errors` turns each into `{"error": "..."}`).

No FastAPI here: the core raises these, the HTTP layer maps them to responses.
"""

from __future__ import annotations

from pydantic import ValidationError


class ServiceError(Exception):
    """An error the client caused or should know about; `status` is the HTTP status code."""

    status: int = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadInputError(ServiceError):
    status = 422


class UnsupportedError(ServiceError):
    status = 400


class UnauthorizedError(ServiceError):
    status = 401

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ModelNotFoundError(ServiceError):
    status = 404


class PayloadTooLargeError(ServiceError):
    status = 413


class UnsupportedMediaTypeError(ServiceError):
    status = 415


class OverloadedError(ServiceError):
    status = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReadyError(ServiceError):
    status = 503


# What each status means here, and an example body: the `responses=` of the routes, for /docs.
STATUSES: dict[int, tuple[str, str]] = {
    400: ("the model cannot run this operation (its kind lacks it, or the run has no classifier or calibration)",
          "model 'default' has no anomaly calibration this service can use (calibration.json); kinds that "
          "support 'anomaly': categorical, gaussian, m2"),
    401: ("VAE_API_TOKEN is set and the bearer token is missing or wrong",
          "Authorization: expected 'Bearer <token>', got nothing"),
    404: ("no such model", "no model named 'nope'; models: default"),
    413: ("body larger than VAE_MAX_BODY_BYTES",
          "body: expected at most 16777216 bytes (VAE_MAX_BODY_BYTES), got 20000000"),
    415: ("a body that is neither JSON nor (for image operations) multipart/form-data",
          "Content-Type: expected application/json or multipart/form-data, got text/plain"),
    422: ("bad input: the message names the field, what was expected and what arrived",
          "k: expected at most 5000 importance samples (VAE_MAX_K), got 100000"),
    429: ("the model's queue is full (VAE_MAX_QUEUE); Retry-After says when to try again",
          "default.elbo: the queue is full (256 requests, VAE_MAX_QUEUE=256); retry in 1 s"),
    503: ("the model is not ready (still loading, or it failed to load), or the server is shutting down",
          "model 'default' is not ready: still loading"),
}


def plural(count: int, noun: str) -> str:
    """`plural(1, "image")` is "1 image", `plural(3, "image")` "3 images"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe_validation_errors(errors, prefix: str = "") -> str:
    """'field: expected ..., got ...' for each pydantic error, joined by '; '."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        field = prefix + ".".join(loc) if loc else (prefix.rstrip(".") or "body")
        got = error.get("input")
        shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if error.get("type") == "missing":
            parts.append(f"{field}: required, but missing")
        elif error.get("type") == "extra_forbidden":
            parts.append(f"{field}: not a known field")
        else:
            parts.append(f"{field}: {error.get('msg', 'invalid')}, got {shown}")
    return "; ".join(parts)


def bad_input_from(error: ValidationError, prefix: str = "") -> BadInputError:
    return BadInputError(describe_validation_errors(error.errors(include_url=False), prefix))
