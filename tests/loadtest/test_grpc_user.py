"""The Locust gRPC users (unary and streaming) against the real server: well-formed calls,
every answer checked, the token from LOADTEST_TOKEN as metadata."""

from __future__ import annotations

from loadtest.suite import runner, shapes
from tests.support.helpers import HARDENED_TOKEN


def _run(server, out, users: int = 2, tag: str = "grpc", **kwargs):
    cfg = runner.RunConfig(
        host=server.url,
        out=out,
        params=shapes.ShapeParams(users=users, spawn_rate=10, run_time=3),
        tags=[tag],
        images_per_request=2,
        top_k=3,
        extra=["--grpc-target", server.grpc, *kwargs.pop("extra", [])],
        **kwargs,
    )
    return runner.run(cfg, ready_timeout=30)


def test_the_grpc_user_is_answered_without_failures(server, tmp_path):
    summary = _run(server, tmp_path)
    endpoint = summary["endpoints"]["ModelInfer"]
    assert endpoint["requests"] > 5
    assert summary["totals"]["failures"] == 0, summary["endpoints"]


def test_the_grpc_user_sends_the_token(hardened_server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOADTEST_TOKEN", HARDENED_TOKEN)
    summary = _run(hardened_server, tmp_path / "with", users=1)
    assert summary["totals"]["failures"] == 0, summary["endpoints"]
    monkeypatch.delenv("LOADTEST_TOKEN")
    summary = _run(hardened_server, tmp_path / "without", users=1)
    assert summary["endpoints"]["ModelInfer"]["failures"] > 0
    assert "UNAUTHENTICATED" in (tmp_path / "without" / "locust_failures.csv").read_text()


def test_the_grpc_stream_user_is_answered_without_failures(server, tmp_path):
    summary = _run(server, tmp_path, tag="grpc-stream")
    endpoint = summary["endpoints"]["ModelStreamInfer"]
    assert endpoint["requests"] > 5
    assert summary["totals"]["failures"] == 0, summary["endpoints"]


def test_the_grpc_stream_user_keeps_several_requests_on_one_stream(server, tmp_path):
    """The open loop: one user, arrivals faster than answers, several requests in flight on
    its one stream, each matched to its own answer (a mismatch fails the answer's check)."""
    summary = _run(
        server,
        tmp_path,
        users=1,
        tag="grpc-stream",
        arrival_rate=40.0,
        extra=["--max-in-flight", "8"],
    )
    endpoint = summary["endpoints"]["ModelStreamInfer"]
    assert endpoint["requests"] > 20
    assert summary["totals"]["failures"] == 0, summary["endpoints"]
