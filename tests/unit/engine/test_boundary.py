"""The process boundary in the code's layout: a front end imports the messages between the two
processes (``service.wire``) and nothing of the accelerator process (``service.engine``), no
model code and no Keras backend; the accelerator process imports no web framework."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.helpers import ROOT

FRONT_END = """
import json, sys
from service.server import frontend, http, pod_admission
from service.app import create_app
from service.dataplane.engine_client import EngineClient
from service.grpc import server
from service.jobs import shared
from service.settings import Settings
settings = Settings()
app = create_app(settings, engine=EngineClient(settings, "/nonexistent.sock"))
print(json.dumps(sorted(sys.modules)))
"""

ENGINE = """
import json, sys
from service.engine import process, server
print(json.dumps(sorted(sys.modules)))
"""


def modules(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_front_end_imports_nothing_of_the_accelerator_process():
    loaded = modules(FRONT_END)
    assert "service.wire.messages" in loaded
    forbidden = [
        name
        for name in loaded
        if name.startswith(("service.engine", "service.model.loader", "service.model.runner"))
        or name.startswith("service.model.backends")
        or name.split(".")[0] in ("keras", "tensorflow", "jax")
    ]
    assert forbidden == []


def test_the_accelerator_process_imports_no_web_framework():
    loaded = modules(ENGINE)
    assert "service.wire.messages" in loaded
    assert [n for n in loaded if n.split(".")[0] in ("fastapi", "starlette", "uvicorn")] == []
    assert [
        n for n in loaded if n.startswith(("service.api", "service.codecs", "service.grpc"))
    ] == []
