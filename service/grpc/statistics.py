"""Triton's model statistics from the pod's metrics (every process summed, as a scrape).

What maps onto what the service counts (``serve_model_*``, per pipeline, every protocol):

* ``inference_count``: images answered; ``execution_count``: batches its model stages ran;
* ``inference_stats.success`` / ``fail``: requests and their seconds in the dataplane;
* ``queue``, ``compute_input`` (decode), ``compute_infer`` (the model): summed over answered
  requests, each request counting its slowest image;
* ``last_inference``: milliseconds since the epoch.

``batch_stats``, cache and memory statistics are left empty: the service does not keep them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from ..codecs import v2
from ..metrics import Metrics
from .generated import grpc_service_pb2 as pb

_WANTED = {
    "serve_model_requests_total",
    "serve_model_request_seconds_total",
    "serve_model_images_total",
    "serve_model_phase_seconds_total",
    "serve_model_last_inference_timestamp_seconds",
    "serve_stage_duration_seconds_count",
}


def _values(metrics: Metrics) -> dict[tuple[str, tuple[str, ...]], float]:
    """(sample name, label values in the order pipeline/stage, outcome/phase) -> value."""
    out: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
    for family in metrics.collect():
        for sample in family.samples:
            if sample.name not in _WANTED:
                continue
            labels = sample.labels
            key = tuple(labels[k] for k in ("pipeline", "stage", "outcome", "phase") if k in labels)
            out[(sample.name, key)] += sample.value
    return out


def _duration(count: float, seconds: float) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=int(count), ns=int(seconds * 1e9))


def model_statistics(models: Iterable[v2.Model], metrics: Metrics) -> pb.ModelStatisticsResponse:
    values = _values(metrics)
    out = pb.ModelStatisticsResponse()
    for model in models:
        name = model.info.name

        def get(sample: str, *labels: str, _name: str = name) -> float:
            return values.get((sample, (_name, *labels)), 0.0)

        succeeded = get("serve_model_requests_total", "success")
        executions = sum(
            values.get(("serve_stage_duration_seconds_count", (stage.name,)), 0.0)
            for stage in model.info.stages
            if stage.kind == "model"
        )
        phase = "serve_model_phase_seconds_total"
        out.model_stats.append(
            pb.ModelStatistics(
                name=model.name,
                version=v2.VERSION,
                last_inference=int(1000 * get("serve_model_last_inference_timestamp_seconds")),
                inference_count=int(get("serve_model_images_total")),
                execution_count=int(executions),
                inference_stats=pb.InferStatistics(
                    success=_duration(
                        succeeded, get("serve_model_request_seconds_total", "success")
                    ),
                    fail=_duration(
                        get("serve_model_requests_total", "fail"),
                        get("serve_model_request_seconds_total", "fail"),
                    ),
                    queue=_duration(succeeded, get(phase, "queue")),
                    compute_input=_duration(succeeded, get(phase, "decode")),
                    compute_infer=_duration(succeeded, get(phase, "compute")),
                ),
            )
        )
    return out
