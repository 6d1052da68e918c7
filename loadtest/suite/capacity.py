"""Capacity arithmetic: from the levels of a step-load run to replicas and an HPA target.

Pure functions of measured levels, unit-tested with synthetic data (tests/loadtest).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class Level:
    """One stretch of a run at a steady user count (a step), after its settling time.

    Args:
        users: simulated users during the level.
        start, end: seconds from the start of the run.
        requests, failures: requests that ended in the window, and how many failed.
        rps: requests per second (successful and failed).
        p50_ms, p95_ms, p99_ms, mean_ms: response times of the window's requests.
        server: server-side means over the window (``mean_batch_size``, ``runner_busy``,
            ``images_in_flight``, ``queue_depth_<stage>``), when /metrics was scraped.
    """

    users: int
    start: float
    end: float
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    server: dict[str, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def ok_rps(self) -> float:
        return self.rps * (1 - self.error_rate)

    def as_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate, "ok_rps": self.ok_rps}


@dataclass
class Capacity:
    """The answer of a capacity search; ``per_replica_rps`` is None when no level passed."""

    slo_p99_ms: float
    max_error_rate: float
    per_replica_rps: float | None
    sustained_users: int | None
    limit_reached: bool
    reason: str
    target_rps: float | None = None
    headroom: float = 0.8
    replicas: int | None = None
    hpa_metric: str = "serve_images_in_flight"
    hpa_target_average_value: int | None = None
    hpa_basis: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def passes(level: Level, slo_p99_ms: float, max_error_rate: float) -> bool:
    return level.requests > 0 and level.p99_ms <= slo_p99_ms and level.error_rate <= max_error_rate


def search(
    levels: list[Level],
    slo_p99_ms: float,
    max_error_rate: float = 0.01,
    target_rps: float | None = None,
    headroom: float = 0.8,
    images_per_request: int = 1,
) -> Capacity:
    """Highest successful request rate of a level that meets the objective, taken among the
    levels before the first one that breaks it (past saturation numbers are not trusted).

    Replicas for ``target_rps`` keep each replica at ``headroom`` of that rate. The HPA target
    for ``serve_images_in_flight`` (the chart's default pods metric) is ``headroom`` times the
    in-flight count of one replica at its capacity: measured if /metrics was scraped, else
    from Little's law (rate x images per request x mean latency).
    """
    check(slo_p99_ms, max_error_rate, headroom, target_rps)
    ordered = sorted(levels, key=lambda lv: lv.start)
    passing: list[Level] = []
    breaking: Level | None = None
    for lv in ordered:
        if passes(lv, slo_p99_ms, max_error_rate):
            passing.append(lv)
        else:
            breaking = lv
            break
    cap = Capacity(slo_p99_ms, max_error_rate, None, None, breaking is not None, "", target_rps)
    cap.headroom = headroom
    if not passing:
        first = ordered[0] if ordered else None
        cap.reason = (
            "no level was measured"
            if first is None
            else f"the first level ({first.users} users) already breaks the objective: "
            + _why(first, slo_p99_ms, max_error_rate)
        )
        return cap
    best = max(passing, key=lambda lv: lv.ok_rps)
    cap.per_replica_rps = round(best.ok_rps, 3)
    cap.sustained_users = best.users
    if breaking is not None:
        cap.reason = f"at {breaking.users} users " + _why(breaking, slo_p99_ms, max_error_rate)
    else:
        cap.reason = (
            "every level met the objective: the limit was not reached, so the capacity is at "
            "least this; run more or larger steps"
        )
    if target_rps is not None and target_rps > 0:
        cap.replicas = replicas_for(target_rps, best.ok_rps, headroom)
    cap.hpa_target_average_value, cap.hpa_basis = hpa_target(best, headroom, images_per_request)
    return cap


def check(
    slo_p99_ms: float, max_error_rate: float, headroom: float, target_rps: float | None = None
) -> None:
    """Raises ValueError, naming the option, for objectives a search cannot use."""
    if not slo_p99_ms > 0:
        raise ValueError(f"--slo-p99-ms must be positive, got {slo_p99_ms:g}")
    if not 0 <= max_error_rate < 1:
        raise ValueError(f"--max-error-rate must be in [0, 1), got {max_error_rate:g}")
    if not 0 < headroom <= 1:
        raise ValueError(f"--headroom must be in (0, 1], got {headroom:g}")
    if target_rps is not None and not target_rps > 0:
        raise ValueError(f"--target-rps must be positive, got {target_rps:g}")


def _why(lv: Level, slo_p99_ms: float, max_error_rate: float) -> str:
    reasons = []
    if lv.p99_ms > slo_p99_ms:
        reasons.append(f"p99 {lv.p99_ms:.0f} ms > {slo_p99_ms:.0f} ms")
    if lv.error_rate > max_error_rate:
        reasons.append(f"errors {lv.error_rate:.1%} > {max_error_rate:.1%}")
    if lv.requests == 0:
        reasons.append("no request finished")
    return " and ".join(reasons)


def replicas_for(target_rps: float, per_replica_rps: float, headroom: float = 0.8) -> int:
    """Replicas so that each serves at most ``headroom`` of what one sustains."""
    if per_replica_rps <= 0:
        raise ValueError("per_replica_rps must be positive")
    return max(1, math.ceil(target_rps / (per_replica_rps * headroom) - 1e-9))


def hpa_target(
    level: Level, headroom: float, images_per_request: int = 1
) -> tuple[int | None, str]:
    """(target average ``serve_images_in_flight`` per pod, how it was obtained): ``headroom``
    times the images in flight of one replica at its capacity (``level``), so the HPA adds
    pods before any of them reaches it."""
    measured = level.server.get("images_in_flight")
    if measured is not None and measured > 0:
        at_capacity = measured
        basis = f"serve_images_in_flight measured {measured:.2f}"
    else:
        at_capacity = level.ok_rps * images_per_request * level.mean_ms / 1000
        basis = (
            f"Little's law: {level.ok_rps:.1f} req/s x {images_per_request} image(s) x "
            f"{level.mean_ms:.0f} ms mean latency = {at_capacity:.2f} in flight"
        )
    if not at_capacity > 0:  # NaN too: no mean latency known
        return None, ""
    basis += f" at capacity ({level.users} users), x {headroom:g} headroom"
    return max(1, round(headroom * at_capacity)), basis
