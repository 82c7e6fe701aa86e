"""The service's settings: typed, read from `VAE_*` environment variables when the app is created."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server. `Settings()` reads `VAE_MODEL_DIR`, `VAE_MAX_BATCH_SIZE`, ...

    Nothing reads the environment at import time: `create_app(settings=None)` builds one.
    """

    model_config = SettingsConfigDict(env_prefix="VAE_", extra="ignore", frozen=True)

    model_dir: Path = Field(Path("runs"), description="directory whose subdirectories are run directories")
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="where the models run")
    max_batch_size: int = Field(256, ge=1, description="most rows in one batched forward pass")
    max_wait_ms: float = Field(5.0, ge=0, description="longest a request waits for others to share its pass")
    max_queue: int = Field(256, ge=1, description="requests waiting per model and operation before 429")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body (413 above)")
    max_images: int = Field(1024, ge=1, description="most images, latents or samples in one request")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest uploaded image (width × height) decoded")
    max_k: int = Field(5000, ge=1, description="largest number of importance samples a request may ask for")
    default_k: int = Field(100, ge=1, description="importance samples for /iwae when the request gives none")
    max_num_samples: int = Field(100, ge=0, description="most posterior samples per image for /encode")
    iwae_chunk: int = Field(128, ge=1, description="importance samples per chunk of L_K: bounds memory; seeded answers are reproducible for a fixed chunk size")
    api_token: SecretStr | None = Field(None, description="bearer token required on every route but health")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="logging level of the service's loggers and uvicorn's")
    inference_threads: int = Field(1, ge=1, description="threads running forward passes")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's)")
    shutdown_timeout_s: float = Field(30.0, gt=0, description="longest SIGTERM waits for requests in flight")
    poll_interval_s: float = Field(2.0, ge=0, description="seconds between polls of the model directory for run "
                                                          "directories added, replaced or removed (0: never)")
    benchmark_endpoints: bool = Field(False, description="add POST /benchmark/noop (the HTTP floor)")
    ui: bool = Field(True, description="serve the results page at /ui (behind the token when one is set)")
    max_map_pixels: int = Field(512 * 512, ge=1, description="largest anomaly map returned per image (height × "
                                                             "width); a larger input's map is scaled down to fit")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase(cls, value):
        return value.lower() if isinstance(value, str) else value

    @property
    def token(self) -> str | None:
        """The configured bearer token; an empty VAE_API_TOKEN means none."""
        value = self.api_token.get_secret_value() if self.api_token is not None else ""
        return value or None
