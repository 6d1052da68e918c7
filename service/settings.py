"""Service configuration: every setting is an environment variable with the prefix ``SERVE_``."""

from __future__ import annotations

import json
from functools import cached_property
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .cpus import available_cpus

# The automatic SERVE_DECODE_INLINE_PIXELS: a 1920x1080 image still decodes on the loop (here
# ~5 ms as a JPEG with draft mode, ~34 ms as a PNG, which has none); a larger one would hold the
# loop's other connections for longer.
INLINE_DECODE_PIXELS = 2_000_000


def _listed(value: object) -> object:
    """A list setting from the environment: comma-separated (``1,2,4``) or a JSON array."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON array: {exc}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


# List settings: taken as they are written (NoDecode: not JSON-decoded first), then listed.
IntList = Annotated[list[int], NoDecode, BeforeValidator(_listed)]
TextList = Annotated[list[str], NoDecode, BeforeValidator(_listed)]
HostList = Annotated[
    list[str], NoDecode, BeforeValidator(_listed), AfterValidator(lambda v: [h.lower() for h in v])
]

ModelArch = Literal[
    "resnet50", "resnet101", "resnet152", "resnet50v2", "resnet101v2", "resnet152v2"
]


def default_workers(cpus: int = 0) -> int:
    """One cpu-stage worker process per CPU this process may run on (``cpus`` when set)."""
    return cpus or available_cpus()


class Settings(BaseSettings):
    """All settings of the service. See the README for the table of variables."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="ignore")

    # -- server
    # Address to listen on; containers set 0.0.0.0.
    host: str = "127.0.0.1"
    # TCP port to listen on.
    port: int = Field(8000, ge=1, le=65535)
    # TCP port of the KServe V2 gRPC service (and grpc.health.v1, reflection); 0: no gRPC.
    grpc_port: int = Field(8001, ge=0, le=65535)
    # What serves the gRPC port: native (this project's HTTP/2 on the front end's own event
    # loop) or grpcio's server: the same calls and limits, native at less CPU per call;
    # docs/PROTOCOLS.md, "gRPC servers".
    grpc_server: Literal["grpcio", "native"] = "native"
    # debug | info | warning | error.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # text for people, json (one object per line) for log pipelines.
    log_format: Literal["text", "json"] = "text"
    # Log whole tracebacks of errors (debugging); off: one line with the exception type and the
    # error id, so no request data can reach the logs through an exception message's context.
    log_tracebacks: bool = False
    # After SIGTERM, in-flight requests get this long to finish before the process exits.
    graceful_timeout_s: float = Field(30.0, ge=0)
    # Idle keep-alive connections (HTTP, and gRPC connections without a call) are closed after
    # this long: keep it above the idle timeout of the proxies and load balancers in front
    # (commonly 60 s). A gRPC inference stream that sends no request for this long ends.
    keepalive_timeout_s: float = Field(75.0, ge=1)

    # CPUs the automatic sizes count (front-end processes, cpu-stage workers, model instances);
    # 0: this process's affinity mask and cgroup CPU limit. The chart sets it from the pod's CPU
    # request, so a pod without a CPU limit on a large node does not size itself to the whole
    # node.
    cpus: int = Field(0, ge=0, le=1024)

    # -- model
    # resnet50 | resnet101 | resnet152 | resnet50v2 | resnet101v2 | resnet152v2.
    model: ModelArch = "resnet50"
    # Name of the model in the APIs; empty: the value of SERVE_MODEL.
    model_name: str = ""
    # imagenet (the Keras cache, never downloaded) | random | a .weights.h5/.h5 or .keras file.
    weights: str = "imagenet"
    # Refuse to start when the weights cannot be loaded, instead of serving random weights.
    strict: bool = False
    # Labels, one per line, for a model whose head is not ImageNet's; empty: ImageNet's 1000.
    labels_file: str = ""
    # The Keras backend of the model stage: tensorflow | jax.
    backend: Literal["tensorflow", "jax"] = "tensorflow"
    # off | float16 | bfloat16 compute with float32 outputs (GPU nodes with tensor cores;
    # bfloat16 on Ampere and later); true is float16. Models built here (SERVE_MODEL, arch
    # stages); a .keras file keeps the precision it was saved with.
    mixed_precision: Literal["off", "float16", "bfloat16"] = "off"
    # JAX: the fraction of the GPU's memory to take at start (0: take it as needed).
    jax_memory_fraction: float = Field(0.0, ge=0, lt=1)
    # Compile the model function with XLA, one executable per batch bucket (GPU nodes).
    xla: bool = False
    # Refuse to start unless the backend sees a GPU (GPU pods: a missing RuntimeClass or a driver
    # mismatch would otherwise run the model on the CPU while the pod holds the GPU).
    require_gpu: bool = False
    # TensorFlow's intra-op pool (threads inside one op); 0: TensorFlow's default.
    intra_op_threads: int = Field(0, ge=0)
    # TensorFlow's inter-op pool (independent ops in parallel); 0: TensorFlow's default.
    inter_op_threads: int = Field(0, ge=0)
    # Runner instances per model stage, each executing its own batch at the same time (Triton's
    # instance group), sharing the weights; 0: 1 on a GPU, one single-threaded instance per CPU
    # core (up to 8) without one.
    model_instances: int = Field(0, ge=0, le=64)

    # -- processes
    # HTTP front-end processes sharing the port: each parses, authenticates, validates and
    # decodes its own requests, and all feed the one accelerator process; 0: one per CPU the
    # pod may use (SERVE_CPUS, else the affinity mask and cgroup CPU limit).
    frontend_processes: int = Field(0, ge=0, le=256)
    # A front end whose event loop has not turned for this long (a call that blocks, a
    # deadlock, a stopped process) is killed and replaced: it would otherwise keep its share of
    # the new connections and answer none (0: never).
    frontend_stall_s: float = Field(30.0, ge=0)

    # -- preprocessing
    # Worker processes of the cpu stages between model stages (started only for a pipeline
    # that has one); 0: one per CPU the pod may use.
    preprocess_workers: int = Field(0, ge=0)
    # CPU niceness of each front end's decode thread and of the cpu-stage workers: they yield
    # the CPU to the model runner (0: same priority).
    preprocess_nice: int = Field(10, ge=0, le=19)
    # Images of at most this many pixels decode on the front end's event loop, not in its
    # decode thread: no hand-off between the threads and no contention for the GIL (+9-13 %
    # images/s on a 640x480 JPEG with a front end per core, +37 % on a 224x224 JPEG); larger
    # images keep the loop free for other connections. -1: 2,000,000 when the front ends are
    # at least the CPUs the pod may use, else 0 (the thread is then worth a core); 0: never.
    decode_inline_pixels: int = Field(-1, ge=-1)
    # stretch: resize to the input size (the Keras examples); crop: shorter side, center crop.
    resize: Literal["stretch", "crop"] = "stretch"
    # crop: the fraction of the resized shorter side kept (0.875: 256 -> 224).
    crop_fraction: float = Field(0.875, gt=0, le=1)
    # Images with more pixels are refused before decoding (decompression bombs).
    max_image_pixels: int = Field(50_000_000, ge=1)

    # -- batching
    # The most images in one model execution.
    max_batch_size: int = Field(32, ge=1, le=1024)
    # Batch sizes batches are padded to, comma-separated; each is warmed before ready.
    batch_buckets: IntList = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    # pad: pad a batch up to the next bucket (GPUs: a padded slot is almost free); exact: take
    # only as many images as the largest bucket the queue fills (CPUs: a padded slot costs as
    # much as an image); auto: exact on CPU, pad on GPU.
    batch_padding: Literal["auto", "pad", "exact"] = "auto"
    # Under load only: the longest a batch waits for the clients just answered to come back, so
    # that batches regroup instead of alternating halves (also at most 10% of the last batch's
    # compute time), or for the items due within one execution's fixed cost when they arrive
    # faster than that. An idle service never waits (0: off).
    batch_regroup_ms: float = Field(50.0, ge=0)
    # Hold a partial batch for an idle runner this long (0: never; batches form under load).
    max_batch_delay_ms: float = Field(0.0, ge=0)
    # A batch whose last run at its size took at most this long (assembly and model call), with
    # less than a full batch queued behind it, runs on the accelerator process's event loop,
    # not in its runner thread: the hand-off to the thread and back and the two threads'
    # contention for the GIL cost more than the loop's pause for a model as cheap as the
    # stand-in (a fifth less CPU in that process). A slower batch, or one with a full batch
    # behind it, runs in the thread, so a real model's batches, their overlap with the next
    # batch's assembly on a GPU and batches side by side on several instances stay there
    # (0: always the thread).
    inline_batch_ms: float = Field(2.0, ge=0)
    # Images admitted into the pipeline at once, all stages together; past it: 503.
    max_queue_images: int = Field(512, ge=1)

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
    # Jobs held at once: in memory, queued, running and finished together (the oldest finished
    # make room); with Redis, queued and running. Past it: 503 jobs_full.
    max_jobs: int = Field(10_000, ge=1)
    # Finished jobs (and their results) expire this long after they end.
    job_ttl_s: float = Field(3600.0, gt=0)
    # Images one job may carry (its body is stored in Redis until the job ends).
    max_images_per_job: int = Field(512, ge=1)
    # Bytes one job's body may carry.
    max_job_bytes: int = Field(128 * 1024 * 1024, ge=1)
    # Jobs this replica works on at once.
    job_concurrency: int = Field(2, ge=1)
    # Redis: a job whose replica has not renewed its claim for this long is taken over.
    job_claim_idle_s: float = Field(30.0, gt=0)
    # Starts of one job: a job whose runner died this many times (a replica or front end lost
    # mid-job, as one the job itself may bring down) fails instead of starting again.
    job_max_attempts: int = Field(3, ge=1)
    # Callbacks: hosts (host or host:port) that callback_url may name; empty: no callbacks.
    callback_allowed_hosts: HostList = Field(default_factory=list)
    # Key of the HMAC-SHA256 signature header of callbacks (from a Secret).
    callback_secret: SecretStr = SecretStr("")
    # Seconds one callback attempt may take.
    callback_timeout_s: float = Field(10.0, gt=0)
    # Attempts per callback before it is given up (logged; the job result stays pollable).
    callback_attempts: int = Field(5, ge=1)
    # Wait before the second callback attempt; doubles after each failed attempt.
    callback_backoff_s: float = Field(1.0, gt=0)

    # -- requests
    # Largest request body, enforced while it streams in (413 past it).
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1)
    # Most images in one classify request.
    max_images_per_request: int = Field(64, ge=1)
    # Classes per image when the request does not say.
    default_top_k: int = Field(5, ge=1)
    # Deadline of a request; a client may shorten its own with X-Request-Timeout-Ms (never
    # lengthen it). Work whose deadline passed is dropped before the model.
    request_timeout_s: float = Field(30.0, gt=0)
    # Retry-After seconds on 503 answers (overload, not ready, draining).
    retry_after_s: int = Field(1, ge=1)

    # -- gRPC limits, per front-end process (docs/RELIABILITY.md, "HTTP/2 and gRPC")
    # Largest gRPC message, received or sent (RESOURCE_EXHAUSTED past it): the bound of a
    # ModelInfer request; every other method's request is refused past 64 KiB.
    grpc_max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Calls open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); a client's
    # further calls wait in the client for a free stream. With the message bound, what one
    # connection can make the process hold. Also the requests one ModelStreamInfer stream may
    # have in flight.
    grpc_max_concurrent_streams: int = Field(32, ge=1, le=10_000)
    # Largest metadata (headers) of one call: gRPC refuses a call past twice this with
    # RESOURCE_EXHAUSTED, and a share of those between this and twice this (its soft limit).
    grpc_max_metadata_bytes: int = Field(16 * 1024, ge=1024)
    # The longest a call may take to deliver each request message once it has started (a
    # ModelStreamInfer stream's first; the later ones may come SERVE_KEEPALIVE_TIMEOUT_S apart);
    # past it: DEADLINE_EXCEEDED. Bounds how long an incomplete call holds a stream.
    grpc_message_timeout_s: float = Field(10.0, gt=0)
    # The server pings a connection after this long without traffic, and closes it when the
    # ping is not answered in 20 s (a peer that vanished). Connections without calls close
    # after SERVE_KEEPALIVE_TIMEOUT_S.
    grpc_keepalive_s: float = Field(60.0, ge=1)

    # -- HTTP limits (enforced while the request streams in)
    # The whole request head (request line + headers) at most this many bytes: larger ones get
    # 431 and the connection is closed (server/http.py counts it as the head arrives).
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    # multipart/form-data: non-file fields per request.
    max_form_fields: int = Field(16, ge=1)
    # multipart/form-data: bytes per non-file field.
    max_form_field_bytes: int = Field(64 * 1024, ge=1)

    # -- security (docs/SECURITY.md)
    # API keys / bearer tokens, comma-separated (from a Kubernetes Secret via envFrom). Empty
    # together with auth_tokens_file: no authentication.
    auth_tokens: SecretStr = SecretStr("")
    # A file of tokens, one per line ('#' comments), e.g. a mounted Secret; read at start.
    auth_tokens_file: str = ""
    # Paths answered without a token (probes and Prometheus scrape), comma-separated.
    auth_exempt_paths: TextList = Field(default_factory=lambda: ["/healthz", "/readyz", "/metrics"])
    # Origins allowed by CORS, comma-separated ("*" for any); empty: CORS is off (no headers).
    cors_origins: TextList = Field(default_factory=list)
    # One JSON/text log line per request (request id, route, status, duration); off by default.
    access_log: bool = False

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _parse_precision(cls, value: object) -> object:
        if isinstance(value, bool) or str(value).lower() in ("true", "false", "1", "0"):
            return "float16" if str(value).lower() in ("true", "1") else "off"
        return value

    @model_validator(mode="after")
    def _check_buckets(self) -> Settings:
        buckets = sorted(set(self.batch_buckets))
        if not buckets or buckets[0] < 1:
            raise ValueError(
                f"SERVE_BATCH_BUCKETS={self.batch_buckets}: the buckets must be positive integers"
            )
        buckets = [b for b in buckets if b < self.max_batch_size] + [self.max_batch_size]
        self.batch_buckets = buckets
        if not self.model_name:
            self.model_name = self.model
        return self

    @model_validator(mode="after")
    def _check_ports(self) -> Settings:
        if self.grpc_port == self.port:
            raise ValueError(
                f"SERVE_GRPC_PORT={self.grpc_port} is SERVE_PORT too: the gRPC port must be "
                "another one (0: no gRPC)"
            )
        return self

    @cached_property
    def workers(self) -> int:
        return self.preprocess_workers or default_workers(self.cpus)

    @cached_property
    def frontends(self) -> int:
        """``SERVE_FRONTEND_PROCESSES`` resolved."""
        return self.frontend_processes or self.cpu_count

    @cached_property
    def inline_decode_pixels(self) -> int:
        """``SERVE_DECODE_INLINE_PIXELS`` resolved."""
        if self.decode_inline_pixels >= 0:
            return self.decode_inline_pixels
        return INLINE_DECODE_PIXELS if self.frontends >= self.cpu_count else 0

    @cached_property
    def cpu_count(self) -> int:
        """The CPUs automatic sizes count: ``SERVE_CPUS``, else the affinity mask and cgroup."""
        return self.cpus or available_cpus()
