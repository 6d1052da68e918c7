"""A report folder from a run's files: levels, plots, ``summary.json`` and ``summary.md``.

Inputs (written by ``python -m loadtest run`` or an in-cluster Locust): ``locust_stats.csv``,
``locust_stats_history.csv``, optionally ``requests*.csv`` (every request), ``server_metrics.csv``
(the /metrics scrapes) and ``run.json`` (what was run). ``python -m loadtest report DIR``
rebuilds the outputs from them.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
from pathlib import Path
from typing import Any

from ..common import percentile
from . import capacity as cap
from . import scrape, shapes

PREFIX = "locust"
PLOTS = ("timeline.png", "vs_users.png", "server.png")
# A level shorter than this (seconds) is a ramp, not a step.
MIN_LEVEL_S = 1.5


def _num(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_stats(out: Path) -> dict[str, dict[str, Any]]:
    """Rows of ``locust_stats.csv`` by name (``Aggregated`` included)."""
    with (out / f"{PREFIX}_stats.csv").open() as f:
        return {r["Name"]: r for r in csv.DictReader(f)}


def endpoint_summary(row: dict[str, Any]) -> dict[str, Any]:
    requests = int(row["Request Count"])
    failures = int(row["Failure Count"])
    return {
        "requests": requests,
        "failures": failures,
        "error_rate": failures / requests if requests else 0.0,
        "rps": _num(row["Requests/s"]),
        "mean_ms": _num(row["Average Response Time"]),
        "p50_ms": _num(row["50%"]),
        "p95_ms": _num(row["95%"]),
        "p99_ms": _num(row["99%"]),
        "max_ms": _num(row["Max Response Time"]),
    }


def read_history(out: Path) -> list[dict[str, float]]:
    """Aggregated rows of the history CSV: time, users, cumulative counts and mean, window
    percentiles."""
    path = out / f"{PREFIX}_stats_history.csv"
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            if r["Name"] != "Aggregated":
                continue
            rows.append(
                {
                    "time": float(r["Timestamp"]),
                    "users": float(r["User Count"]),
                    "requests": float(r["Total Request Count"]),
                    "failures": float(r["Total Failure Count"]),
                    "mean": _num(r.get("Total Average Response Time", "")) or math.nan,
                    "p50": _num(r["50%"]) or math.nan,
                    "p95": _num(r["95%"]) or math.nan,
                    "p99": _num(r["99%"]) or math.nan,
                }
            )
    return rows


def read_requests(out: Path) -> list[tuple[float, float, bool, int]]:
    """(end time, response ms, ok, users) of every logged request, sorted by time.

    Each worker process logs its own share of the users: ``users`` is the sum over the
    processes' files of the count each logged last.
    """
    rows = []
    for process, path in enumerate(sorted(out.glob("requests*.csv"))):
        with path.open() as f:
            for r in csv.DictReader(f):
                rows.append(
                    (
                        float(r["time"]),
                        float(r["response_time_ms"]),
                        r["ok"] == "1",
                        int(r["users"]),
                        process,
                    )
                )
    rows.sort()
    latest: dict[int, int] = {}
    out_rows = []
    for t, ms, ok, users, process in rows:
        latest[process] = users
        out_rows.append((t, ms, ok, sum(latest.values())))
    return out_rows


def _runs(keys: list[int]) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive equal keys."""
    out, i = [], 0
    while i < len(keys):
        j = i
        while j < len(keys) and keys[j] == keys[i]:
            j += 1
        out.append((i, j))
        i = j
    return out


def levels_from_requests(
    reqs: list[tuple[float, float, bool, int]],
    t0: float,
    settle: float,
    server_rows: list[dict[str, float]] | None = None,
    stages: list[shapes.Stage] | None = None,
) -> list[cap.Level]:
    """Levels = the stages of the plan (``t0``: its start), else consecutive stretches at one
    user count; the first ``settle`` fraction of each (the queue filling after a step), and a
    stage's ramp, are left out."""
    if stages:
        spans, prev = [], 0
        run_end = reqs[-1][0] if reqs else t0
        for (start, end, users), stage in zip(shapes.windows(stages), stages, strict=True):
            ramp = abs(users - prev) / stage.spawn_rate
            prev = users
            cut = t0 + start + max(settle * (end - start), ramp)
            spans.append((users, cut, min(t0 + end, run_end)))
    else:
        spans = []
        for i, j in _runs([r[3] for r in reqs]):
            start, end = reqs[i][0], reqs[j - 1][0]
            spans.append((reqs[i][3], start + settle * (end - start), end))
    times_of = [r[0] for r in reqs]
    levels = []
    for users, cut, end in spans:
        span = end - cut
        if users == 0 or span < MIN_LEVEL_S * (1 - settle):
            continue
        window = reqs[bisect.bisect_left(times_of, cut) : bisect.bisect_right(times_of, end)]
        times = sorted(r[1] for r in window)
        if not window:
            continue
        levels.append(
            cap.Level(
                users=users,
                start=round(cut - t0, 3),
                end=round(end - t0, 3),
                requests=len(window),
                failures=sum(1 for r in window if not r[2]),
                rps=len(window) / span,
                p50_ms=percentile(times, 50),
                p95_ms=percentile(times, 95),
                p99_ms=percentile(times, 99),
                mean_ms=sum(times) / len(times),
                server=scrape.summarize(server_rows or [], cut, end),
            )
        )
    return levels


def levels_from_history(
    hist: list[dict[str, float]],
    t0: float,
    settle: float,
    server_rows: list[dict[str, float]] | None = None,
) -> list[cap.Level]:
    """Levels from Locust's history alone (distributed runs log no requests): counts from the
    cumulative totals, percentiles from Locust's 10-s window at the end of the level."""
    levels = []
    for i, j in _runs([int(h["users"]) for h in hist]):
        users = int(hist[i]["users"])
        if users == 0 or hist[j - 1]["time"] - hist[i]["time"] < MIN_LEVEL_S:
            continue
        k = i + int(settle * (j - i))
        a, b = hist[k], hist[j - 1]
        span = b["time"] - a["time"]
        n = int(b["requests"] - a["requests"])
        if span <= 0 or n <= 0:
            continue
        levels.append(
            cap.Level(
                users=users,
                start=a["time"] - t0,
                end=b["time"] - t0,
                requests=n,
                failures=int(b["failures"] - a["failures"]),
                rps=n / span,
                p50_ms=b["p50"],
                p95_ms=b["p95"],
                p99_ms=b["p99"],
                # The window's mean from the cumulative means before and after it.
                mean_ms=(b["mean"] * b["requests"] - a["mean"] * a["requests"]) / n,
                server=scrape.summarize(server_rows or [], a["time"], b["time"]),
            )
        )
    return levels


def timeline(reqs, hist, t0: float) -> list[dict[str, float]]:
    """Per-second throughput, error rate and latency percentiles."""
    if reqs:
        buckets: dict[int, list[tuple[float, bool, int]]] = {}
        for t, ms, ok, users in reqs:
            buckets.setdefault(int(t - t0), []).append((ms, ok, users))
        out = []
        for s in range(min(buckets), max(buckets) + 1):
            rows = buckets.get(s, [])
            times = sorted(r[0] for r in rows)
            out.append(
                {
                    "t": s + 0.5,
                    "users": max((r[2] for r in rows), default=math.nan),
                    "rps": float(len(rows)),
                    "error_rate": (sum(1 for r in rows if not r[1]) / len(rows)) if rows else 0.0,
                    "p50": percentile(times, 50),
                    "p95": percentile(times, 95),
                    "p99": percentile(times, 99),
                }
            )
        return out
    out = []
    for a, b in zip(hist, hist[1:], strict=False):
        dt = b["time"] - a["time"]
        n = b["requests"] - a["requests"]
        if dt <= 0:
            continue
        out.append(
            {
                "t": b["time"] - t0,
                "users": b["users"],
                "rps": n / dt,
                "error_rate": (b["failures"] - a["failures"]) / n if n > 0 else 0.0,
                "p50": b["p50"],
                "p95": b["p95"],
                "p99": b["p99"],
            }
        )
    return out


def runner_busy_series(server_rows: list[dict[str, float]]) -> list[float]:
    """The runner busy fraction between consecutive scrapes, as the summary and the levels
    count it (busy seconds per second over the model instances); NaN where unknown."""
    return [
        scrape.summarize([a, b]).get("runner_busy", math.nan)
        for a, b in zip(server_rows, server_rows[1:], strict=False)
    ]


def plot(out: Path, tl, levels: list[cap.Level], server_rows, t0: float, slo_ms=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Throughput, latency and errors over time.
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    t = [r["t"] for r in tl]
    axes[0].plot(t, [r["rps"] for r in tl], color="tab:blue", label="requests/s")
    axes[0].set_ylabel("requests/s")
    users_ax = axes[0].twinx()
    users_ax.step(t, [r["users"] for r in tl], where="mid", color="tab:gray", alpha=0.6)
    users_ax.set_ylabel("users", color="tab:gray")
    for q, color in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
        axes[1].plot(t, [r[q] for r in tl], color=color, label=q)
    if slo_ms:
        axes[1].axhline(slo_ms, color="black", linestyle="--", linewidth=1, label="p99 SLO")
    axes[1].set_ylabel("latency (ms)")
    axes[1].legend(loc="upper left")
    axes[2].plot(t, [100 * r["error_rate"] for r in tl], color="tab:red")
    axes[2].set_ylabel("errors (%)")
    axes[2].set_xlabel("seconds since start")
    axes[0].set_title("Throughput, latency and errors over time")
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=90)
    plt.close(fig)

    # The same against users (one point per level).
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    users = [lv.users for lv in levels]
    axes[0].plot(users, [lv.ok_rps for lv in levels], "o-", color="tab:blue")
    axes[0].set_ylabel("successful requests/s")
    for q, color in (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red")):
        axes[1].plot(users, [getattr(lv, q) for lv in levels], "o-", color=color, label=q[:3])
    if slo_ms:
        axes[1].axhline(slo_ms, color="black", linestyle="--", linewidth=1, label="p99 SLO")
    axes[1].set_ylabel("latency (ms)")
    axes[1].legend()
    axes[2].plot(users, [100 * lv.error_rate for lv in levels], "o-", color="tab:red")
    axes[2].set_ylabel("errors (%)")
    for ax in axes:
        ax.set_xlabel("users")
    fig.suptitle("Per level (steady part of each step)")
    fig.tight_layout()
    fig.savefig(out / "vs_users.png", dpi=90)
    plt.close(fig)

    # Server side: batch size, queues, runner busy.
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    pairs = list(zip(server_rows, server_rows[1:], strict=False))
    ts = [b["time"] - t0 for _, b in pairs]
    batch = [
        (b.get("inference_count", 0) - a.get("inference_count", 0))
        / (b.get("execution_count", 0) - a.get("execution_count", 0))
        if b.get("execution_count", 0) > a.get("execution_count", 0)
        else math.nan
        for a, b in pairs
    ]
    axes[0].plot(ts, batch, ".-", color="tab:purple")
    axes[0].set_ylabel("mean batch size")
    stages = sorted({k for r in server_rows for k in r if k.startswith("queue_depth_")})
    for key in stages:
        axes[1].plot(ts, [b.get(key, math.nan) for _, b in pairs], label=key[len("queue_depth_") :])
    axes[1].plot(
        ts, [b.get("images_in_flight", math.nan) for _, b in pairs], "--", label="images in flight"
    )
    axes[1].set_ylabel("items")
    axes[1].legend(loc="upper left")
    axes[2].plot(ts, [100 * x for x in runner_busy_series(server_rows)], color="tab:brown")
    axes[2].set_ylabel("runner busy (%)")
    axes[2].set_ylim(0, 105)
    axes[2].set_xlabel("seconds since start")
    axes[0].set_title("Server side (from /metrics)")
    fig.tight_layout()
    fig.savefig(out / "server.png", dpi=90)
    plt.close(fig)


def build(
    out: Path,
    slo_p99_ms: float | None = None,
    max_error_rate: float = 0.01,
    target_rps: float | None = None,
    headroom: float = 0.8,
    settle: float = 0.25,
    images_per_request: int | None = None,
) -> dict[str, Any]:
    """Write plots, ``summary.json`` and ``summary.md`` into ``out``; return the summary.

    ``images_per_request``: None takes run.json's (1 without one, as in-cluster).
    """
    meta = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    stats = read_stats(out)
    hist = read_history(out)
    reqs = read_requests(out)
    server_rows = scrape.read_rows(out / "server_metrics.csv")
    # Time 0: the first request starts, as the plan does (Locust's start-up before it is not
    # part of the test).
    starts = [min(r[0] - r[1] / 1000 for r in reqs)] if reqs else []
    starts = starts or [h["time"] for h in hist if h["users"] > 0][:1]
    t0 = starts[0] if starts else meta.get("locust_started", 0.0)
    stages = [shapes.Stage(**s) for s in meta.get("stages", [])]
    if reqs:
        levels = levels_from_requests(reqs, t0, settle, server_rows, stages)
    else:
        levels = levels_from_history(hist, t0, settle, server_rows)
    tl = timeline(reqs, hist, t0)
    total = endpoint_summary(stats["Aggregated"])
    run_end = max([r[0] for r in reqs[-1:]] + [h["time"] for h in hist[-1:]] + [t0])
    summary: dict[str, Any] = {
        "run": meta,
        "totals": total,
        "endpoints": {n: endpoint_summary(r) for n, r in stats.items() if n != "Aggregated"},
        "levels": [lv.as_dict() for lv in levels],
        "server": scrape.summarize(server_rows, t0, run_end),
        "files": {
            "locust_html": "locust.html",
            "plots": list(PLOTS),
            "requests_logged": len(reqs),
        },
    }
    if slo_p99_ms is not None:
        result = cap.search(
            levels,
            slo_p99_ms,
            max_error_rate,
            target_rps,
            headroom,
            images_per_request or int(meta.get("images_per_request", 1)),
        )
        summary["capacity"] = result.as_dict()
    plot(out, tl, levels, server_rows, t0, slo_p99_ms)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    return summary


def _json(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(type(x).__name__)


def _ms(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0f}"


def markdown(s: dict[str, Any]) -> str:
    run, t = s["run"], s["totals"]
    what = (
        f"- target: `{run.get('host', '?')}`; shape `{run.get('shape', '?')}`; "
        f"tags `{', '.join(run.get('tags') or ['all'])}`; "
        + (
            f"open loop at {run['arrival_rate']:g} req/s"
            if run.get("arrival_rate")
            else "closed loop"
        )
        if run
        # Rebuilt from Locust's CSVs alone (e.g. the chart's master): nothing says what ran.
        else "- target, shape, tags and loop unknown: no `run.json` (Locust's CSVs only)"
    )
    lines = [
        f"# Load test: {run.get('name', 'run')}",
        "",
        what,
        f"- {t['requests']} requests, {t['failures']} failed ({t['error_rate']:.2%}); "
        f"{t['rps']:.1f} req/s overall; p50 {_ms(t['p50_ms'])} ms, p95 {_ms(t['p95_ms'])} ms, "
        f"p99 {_ms(t['p99_ms'])} ms (Locust's figures)",
    ]
    srv = s.get("server") or {}
    if srv:
        parts = []
        if "mean_batch_size" in srv:
            parts.append(f"mean batch size {srv['mean_batch_size']:.2f}")
        if "runner_busy" in srv:
            parts.append(f"model runner busy {srv['runner_busy']:.0%}")
        for k, v in srv.items():
            if k.startswith("queue_depth_") and not k.endswith("_max"):
                parts.append(f"queue {k[12:]} mean {v:.1f} (max {srv[k + '_max']:.0f})")
        lines.append("- server (/metrics): " + "; ".join(parts))
    lines += [
        "",
        "| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, e in s["endpoints"].items():
        lines.append(
            f"| `{name}` | {e['requests']} | {e['failures']} | {e['rps']:.1f} | "
            f"{_ms(e['p50_ms'])} | {_ms(e['p95_ms'])} | {_ms(e['p99_ms'])} |"
        )
    if s["levels"]:
        lines += [
            "",
            "Levels (steady part of each step; from the request log or Locust's history):",
            "",
            "| users | req/s | errors | p50 ms | p95 ms | p99 ms | batch | runner busy "
            "| service CPU | Locust CPU |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for lv in s["levels"]:
            sv = lv["server"]
            batch = f"{sv['mean_batch_size']:.2f}" if "mean_batch_size" in sv else "–"
            busy = f"{sv['runner_busy']:.0%}" if "runner_busy" in sv else "–"
            cores = [f"{sv[k]:.2f}" if k in sv else "–" for k in ("cpu_service", "cpu_loadgen")]
            lines.append(
                f"| {lv['users']} | {lv['rps']:.1f} | {lv['error_rate']:.1%} | "
                f"{_ms(lv['p50_ms'])} | {_ms(lv['p95_ms'])} | {_ms(lv['p99_ms'])} | "
                f"{batch} | {busy} | {cores[0]} | {cores[1]} |"
            )
        if any(k.startswith("cpu_") for lv in s["levels"] for k in lv["server"]):
            lines += [
                "",
                "CPU columns: cores kept busy (CPU seconds per second) by the service's "
                "processes (when started locally) and by Locust.",
            ]
    c = s.get("capacity")
    if c:
        lines += ["", "## Capacity", ""]
        if c["per_replica_rps"] is None:
            lines.append(f"No level met p99 ≤ {c['slo_p99_ms']:g} ms: {c['reason']}.")
        else:
            # Not reached: the reason says so (and that the capacity is at least this).
            limit = "the limit: " if c["limit_reached"] else ""
            lines.append(
                f"One replica sustains **{c['per_replica_rps']:.1f} req/s** "
                f"({c['sustained_users']} users) with p99 ≤ {c['slo_p99_ms']:g} ms and errors "
                f"≤ {c['max_error_rate']:.1%}; {limit}{c['reason']}."
            )
            if c.get("replicas"):
                lines.append(
                    f"\n{c['target_rps']:g} req/s needs **{c['replicas']} replicas** "
                    f"(each at ≤ {c['headroom']:.0%} of its capacity)."
                )
            if c.get("hpa_target_average_value"):
                lines.append(
                    f"\nHPA: `autoscaling.podsMetric.name={c['hpa_metric']}`, "
                    f"`targetAverageValue={c['hpa_target_average_value']}` ({c['hpa_basis']})."
                )
    lines += [
        "",
        "Plots: `timeline.png`, `vs_users.png`, `server.png`; Locust's report: `locust.html`.",
        "",
    ]
    return "\n".join(lines)
