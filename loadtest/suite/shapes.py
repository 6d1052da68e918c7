"""Load shapes as plans: a list of stages, each holding a user count for some seconds.

The Locust shape class in ``locustfile.py`` walks the plan; the report and the capacity search
read the same plan to know where each step begins and ends.
"""

from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("constant", "step", "spike", "soak")


@dataclass(frozen=True)
class Stage:
    """Hold ``users`` (reached at ``spawn_rate`` users/s) for ``duration`` seconds."""

    duration: float
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class ShapeParams:
    """Everything a shape needs; unused fields are ignored by the other shapes.

    Args:
        users: constant/soak users; the spike shape's base load.
        spawn_rate: users started per second.
        run_time: total seconds (constant, spike, soak).
        step_users: users added at each step.
        step_time: seconds per step.
        steps: number of steps.
        spike_users: users during the spike.
        spike_at: seconds from the start to the spike.
        spike_duration: seconds the spike lasts.
        ramp_time: soak: seconds to ramp from 0 to ``users``.
    """

    users: int = 4
    spawn_rate: float = 10.0
    run_time: float = 60.0
    step_users: int = 2
    step_time: float = 30.0
    steps: int = 5
    spike_users: int = 16
    spike_at: float = 20.0
    spike_duration: float = 10.0
    ramp_time: float = 60.0


def plan(shape: str, p: ShapeParams) -> list[Stage]:
    """The stages of ``shape``; raises ValueError for impossible parameters."""
    if p.spawn_rate <= 0:
        raise ValueError("spawn_rate must be positive")
    if shape == "constant":
        _positive(users=p.users, run_time=p.run_time)
        return [Stage(p.run_time, p.users, p.spawn_rate)]
    if shape == "step":
        _positive(step_users=p.step_users, step_time=p.step_time, steps=p.steps)
        return [Stage(p.step_time, p.step_users * k, p.spawn_rate) for k in range(1, p.steps + 1)]
    if shape == "spike":
        _positive(users=p.users, spike_users=p.spike_users, spike_duration=p.spike_duration)
        if p.spike_users <= p.users:
            raise ValueError("spike_users must exceed users (the base load)")
        after = p.run_time - p.spike_at - p.spike_duration
        if p.spike_at < 0 or after < 0:
            raise ValueError("spike_at + spike_duration must fit in run_time")
        stages = [
            Stage(p.spike_at, p.users, p.spawn_rate),
            # A spike arrives at once: spawn everyone in the first second.
            Stage(p.spike_duration, p.spike_users, max(p.spawn_rate, float(p.spike_users))),
            Stage(after, p.users, max(p.spawn_rate, float(p.spike_users))),
        ]
        return [s for s in stages if s.duration > 0]
    if shape == "soak":
        _positive(users=p.users, run_time=p.run_time)
        if p.ramp_time < 0 or p.ramp_time >= p.run_time:
            raise ValueError("ramp_time must be shorter than run_time")
        rate = p.users / p.ramp_time if p.ramp_time > 0 else p.spawn_rate
        stages = [Stage(p.ramp_time, p.users, rate), Stage(p.run_time - p.ramp_time, p.users, rate)]
        return [s for s in stages if s.duration > 0]
    raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def total_time(stages: list[Stage]) -> float:
    return sum(s.duration for s in stages)


def max_users(stages: list[Stage]) -> int:
    return max(s.users for s in stages)


def at(stages: list[Stage], elapsed: float) -> Stage | None:
    """The stage running ``elapsed`` seconds after the start; None once the plan is over."""
    end = 0.0
    for stage in stages:
        end += stage.duration
        if elapsed < end:
            return stage
    return None


def windows(stages: list[Stage]) -> list[tuple[float, float, int]]:
    """(start, end, users) of each stage, in seconds from the start."""
    out, start = [], 0.0
    for s in stages:
        out.append((start, start + s.duration, s.users))
        start += s.duration
    return out


def seconds(text: str) -> float:
    """``90``, ``90s``, ``2m``, ``1h30m`` -> seconds."""
    text = str(text).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in "hms" and number:
            total += float(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
        else:
            raise ValueError(f"not a duration: {text!r}")
    if number:
        raise ValueError(f"not a duration (unit missing at the end): {text!r}")
    return total
