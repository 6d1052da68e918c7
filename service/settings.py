"""Service configuration: every setting is an environment variable with the prefix ``SERVE_``."""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ModelArch = Literal[
    "resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2", "resnet152v2"
]


def default_workers() -> int:
    """One preprocessing process per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """All settings of the service. See the README for the table of variables."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="ignore")

    # -- server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    graceful_timeout_s: float = Field(30.0, ge=0)
    keepalive_timeout_s: float = Field(75.0, ge=1)

    # -- model
    model: ModelArch = "resnet50"
    model_name: str = ""  # name in the API; defaults to `model`
    weights: str = "imagenet"  # imagenet | random | path to .weights.h5 / .keras
    strict: bool = False  # refuse to start instead of falling back to random weights
    labels_file: str = (
        ""  # one label per line; default: the ImageNet classes shipped in the package
    )
    mixed_precision: bool = False
    xla: bool = False
    intra_op_threads: int = Field(0, ge=0)  # 0: TensorFlow's default (all cores)
    inter_op_threads: int = Field(0, ge=0)

    # -- preprocessing
    preprocess_workers: int = Field(0, ge=0)  # 0: one per CPU
    preprocess_nice: int = Field(10, ge=0, le=19)  # worker processes yield the CPU to the model
    resize: Literal["stretch", "crop"] = "stretch"
    crop_fraction: float = Field(0.875, gt=0, le=1)
    max_image_pixels: int = Field(50_000_000, ge=1)

    # -- batching
    max_batch_size: int = Field(32, ge=1, le=1024)
    batch_buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32]
    )
    max_batch_delay_ms: float = Field(0.0, ge=0)
    max_queue_images: int = Field(512, ge=1)  # images admitted into the pipeline at once

    # -- pipelines (docs/ARCHITECTURE.md, "Pipelines and the response manager")
    # A YAML file of named pipelines (decode -> model stage(s) -> top-k); empty: only `default`,
    # which is SERVE_MODEL with SERVE_WEIGHTS.
    pipelines_file: str = ""
    # The pipeline a request gets when it names none.
    pipeline: str = "default"

    # -- asynchronous jobs (docs/JOBS.md)
    # Redis URL (redis://host:6379/0): jobs go through a Redis Stream shared by the replicas;
    # empty: an in-memory store (one replica; jobs die with the process).
    redis_url: str = ""
    # Jobs kept in memory at once (in-memory store), queued and finished together.
    max_jobs: int = Field(10_000, ge=1)
    # Finished jobs (and their results) expire this long after they end.
    job_ttl_s: float = Field(3600.0, gt=0)
    # Images and bytes one job may carry (its body; stored in Redis until the job ends).
    max_images_per_job: int = Field(512, ge=1)
    max_job_bytes: int = Field(128 * 1024 * 1024, ge=1)
    # Jobs this replica works on at once.
    job_concurrency: int = Field(2, ge=1)
    # Redis: a job whose replica has not renewed its claim for this long is taken over.
    job_claim_idle_s: float = Field(30.0, gt=0)
    # Callbacks: hosts (host or host:port) that callback_url may name; empty: no callbacks.
    callback_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Key of the HMAC-SHA256 signature header of callbacks (from a Secret).
    callback_secret: SecretStr = SecretStr("")
    callback_timeout_s: float = Field(10.0, gt=0)
    callback_attempts: int = Field(5, ge=1)
    callback_backoff_s: float = Field(1.0, gt=0)  # doubles after each failed attempt

    # -- requests
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    max_images_per_request: int = Field(64, ge=1)
    default_top_k: int = Field(5, ge=1)
    # Deadline of a request; a client may shorten its own with X-Request-Timeout-Ms (never
    # lengthen it). Work whose deadline passed is dropped before the model.
    request_timeout_s: float = Field(30.0, gt=0)
    retry_after_s: int = Field(1, ge=1)

    # -- HTTP limits (enforced while the request streams in)
    # The whole request head (request line + headers) at most this many bytes: larger ones get
    # 431 from the h11 parser (uvicorn's httptools parser has no such limit, so h11 is used).
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    # multipart/form-data: non-file fields per request, and bytes per non-file field.
    max_form_fields: int = Field(16, ge=1)
    max_form_field_bytes: int = Field(64 * 1024, ge=1)

    # -- security (docs/SECURITY.md)
    # API keys / bearer tokens, comma-separated (from a Kubernetes Secret via envFrom). Empty
    # together with auth_tokens_file: no authentication.
    auth_tokens: SecretStr = SecretStr("")
    # A file of tokens, one per line ('#' comments), e.g. a mounted Secret; read at start.
    auth_tokens_file: str = ""
    # Paths answered without a token (probes and Prometheus scrape), comma-separated.
    auth_exempt_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/healthz", "/readyz", "/metrics"]
    )
    # Origins allowed by CORS, comma-separated ("*" for any); empty: CORS is off (no headers).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # One JSON/text log line per request (request id, route, status, duration); off by default.
    access_log: bool = False

    @field_validator("batch_buckets", mode="before")
    @classmethod
    def _parse_buckets(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [int(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("auth_exempt_paths", "cors_origins", mode="before")
    @classmethod
    def _parse_csv(cls, value: object) -> object:
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return json.loads(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_buckets(self) -> Settings:
        buckets = sorted(set(self.batch_buckets))
        if not buckets or buckets[0] < 1:
            raise ValueError("batch_buckets must be positive integers")
        buckets = [b for b in buckets if b < self.max_batch_size] + [self.max_batch_size]
        self.batch_buckets = buckets
        if not self.model_name:
            self.model_name = self.model
        return self

    @cached_property
    def workers(self) -> int:
        return self.preprocess_workers or default_workers()

    @field_validator("callback_allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def env_names(cls) -> dict[str, object]:
        """Environment variable name -> default, for documentation and tests."""
        out: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
            out[f"SERVE_{name.upper()}"] = default
        return out
