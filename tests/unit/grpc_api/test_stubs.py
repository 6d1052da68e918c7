"""The checked-in stubs are what ``scripts/grpc_stubs.py`` makes of tritonclient's definitions."""

from __future__ import annotations

import subprocess
import sys

from tests.support.helpers import ROOT


def test_the_generated_stubs_are_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "grpc_stubs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_the_stubs_describe_tritons_service():
    from tritonclient.grpc import service_pb2

    from service.grpc.generated import grpc_service_pb2

    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == "inference.GRPCInferenceService"
    assert sorted(ours.methods_by_name) == sorted(theirs.methods_by_name)
