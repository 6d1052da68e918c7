"""The real server process: python -m service under uvicorn on a loopback port."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import free_port, start_server, stop_server


def test_real_server_classifies_a_jpeg(server, jpeg_bytes):
    r = httpx.post(
        server.url + "/v1/classify", content=jpeg_bytes, headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 1
    assert len(body["predictions"][0]) == 5
    assert body["predictions"][0][0]["label"].startswith("class_")
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v2/health/ready", "/v1/models"])
def test_head_answers_what_get_does_without_the_body(server, path):
    """RFC 9110 section 9.3.2; monitors and proxies that check with HEAD."""
    get = httpx.get(server.url + path)
    head = httpx.head(server.url + path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["x-request-id"]


def test_head_on_a_post_route_is_still_refused(server):
    r = httpx.head(server.url + "/v1/classify")
    assert r.status_code == 405
    assert "POST" in r.headers["allow"]


# -- refused at start: a bad setting stops the pod before anything starts ------------------


def _start(env_overrides: dict[str, str], timeout: float = 60) -> tuple[int | None, str]:
    """``python -m service`` as an operator starts it; its exit status (None: still running
    after ``timeout``, then killed) and its output."""
    env = {
        **os.environ,
        "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(free_port()),
        "SERVE_GRPC_PORT": str(free_port()),
        "SERVE_FRONTEND_PROCESSES": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **env_overrides,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # its children die with it (PR_SET_PDEATHSIG)
        return None, process.communicate()[0]
    return process.returncode, out


def _weights(tmp_path: Path, tiny_model_file: Path, name: str) -> Path:
    whole = tiny_model_file.read_bytes()
    if name == "empty.keras":
        data = b""
    elif name == "truncated.keras":
        data = whole[: len(whole) // 2]
    else:  # truncated.weights.h5
        from tests.support.tiny import build_tiny

        build_tiny().save_weights(tmp_path / "whole.weights.h5")
        data = (tmp_path / "whole.weights.h5").read_bytes()
        data = data[: len(data) // 2]
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


@pytest.mark.parametrize(
    ("env", "status", "says"),
    [
        ({"SERVE_PORT": "abc"}, 2, "SERVE_PORT='abc': input should be a valid integer"),
        ({"SERVE_MAX_BATCH_SIZE": "0"}, 2, "SERVE_MAX_BATCH_SIZE='0': input should be greater"),
        ({"SERVE_BATCH_BUCKETS": "0,-1"}, 2, "SERVE_BATCH_BUCKETS=[0, -1]: the buckets must be"),
        ({"SERVE_BATCH_BUCKETS": "1,b"}, 2, "SERVE_BATCH_BUCKETS='1,b': input should be a valid"),
        ({"SERVE_CORS_ORIGINS": "[1"}, 2, "SERVE_CORS_ORIGINS='[1': not a JSON array"),
        ({"SERVE_GRPC_PORT": "same"}, 2, "is SERVE_PORT too"),
        ({"SERVE_PIPELINES_FILE": "missing.yaml"}, 2, "SERVE_PIPELINES_FILE: cannot read"),
        (
            {"SERVE_PIPELINES_FILE": "bad.yaml"},
            2,
            "SERVE_PIPELINES_FILE: {tmp}/bad.yaml: not valid",
        ),
        ({"SERVE_PIPELINE": "nosuch"}, 2, "SERVE_PIPELINE='nosuch': no such pipeline"),
        ({"SERVE_LABELS_FILE": "missing.txt"}, 2, "SERVE_LABELS_FILE '{tmp}/missing.txt': No such"),
        ({"SERVE_AUTH_TOKENS_FILE": "missing"}, 2, "SERVE_AUTH_TOKENS_FILE '{tmp}/missing': No"),
        (
            {"SERVE_WEIGHTS": "empty.keras"},
            3,
            "SERVE_WEIGHTS '{tmp}/empty.keras': the file is empty",
        ),
        ({"SERVE_WEIGHTS": "truncated.keras"}, 3, "truncated.keras': not a .keras file"),
        ({"SERVE_WEIGHTS": "truncated.weights.h5"}, 3, "truncated.weights.h5': truncated: "),
    ],
    ids=lambda v: next(iter(v.items()))[1] if isinstance(v, dict) else None,
)
def test_a_bad_setting_stops_the_pod_at_once_with_one_line_naming_it(
    env, status, says, tiny_model_file, tmp_path
):
    (tmp_path / "bad.yaml").write_text("pipelines: [\n")
    given = {"SERVE_WEIGHTS": str(tiny_model_file)}
    for key, value in env.items():
        if key == "SERVE_WEIGHTS":
            value = str(_weights(tmp_path, tiny_model_file, value))
        elif value.endswith((".yaml", ".txt")) or value == "missing":
            value = str(tmp_path / value)
        given[key] = value
    if given.get("SERVE_GRPC_PORT") == "same":
        given["SERVE_GRPC_PORT"] = given["SERVE_PORT"] = str(free_port())
    started = time.monotonic()
    code, out = _start(given)
    assert code == status, out[-3000:]
    assert time.monotonic() - started < 30  # refused before anything loads
    assert "Traceback" not in out
    refusals = [line for line in out.splitlines() if "CRITICAL" in line]
    assert len(refusals) == 1, out[-3000:]
    assert says.format(tmp=tmp_path) in refusals[0]


def test_every_problem_is_named_and_typos_are_warned_with_the_closest_setting():
    code, out = _start(
        {"SERVE_PORT": "-1", "SERVE_CROP_FRACTION": "2", "SERVE_MAX_BATCH": "8", "SERVE_XYZZY": "1"}
    )
    assert code == 2 and "Traceback" not in out
    lines = out.splitlines()
    assert any("SERVE_PORT='-1': input should be greater than or equal to 1" in x for x in lines)
    assert any(
        "SERVE_CROP_FRACTION='2': input should be less than or equal to 1" in x for x in lines
    )
    warned = [x for x in lines if "WARNING" in x]
    assert any(
        "SERVE_MAX_BATCH is not a setting and is ignored; did you mean SERVE_MAX_BATCH_SIZE?" in x
        for x in warned
    )
    assert any(x.endswith("SERVE_XYZZY is not a setting and is ignored") for x in warned)


def test_an_unknown_variable_is_warned_about_on_a_pod_that_starts(tiny_model_file, tmp_path):
    from service.server.preflight import unknown_variables

    assert unknown_variables({"SERVE_GRACEFUL_TIMEOUT": "5", "serve_port": "1", "HOME": "/"}) == [
        "SERVE_GRACEFUL_TIMEOUT is not a setting and is ignored; did you mean "
        "SERVE_GRACEFUL_TIMEOUT_S?"
    ]
    server = start_server(
        {"SERVE_WEIGHTS": str(tiny_model_file), "SERVE_MAX_BATCH_DELAY": "5"}, tmp_path / "log"
    )
    assert stop_server(server) == 0
    assert "SERVE_MAX_BATCH_DELAY is not a setting and is ignored; did you mean " in server.log()


def test_no_writable_run_directory_stops_the_pod_with_one_line(tiny_model_file):
    # A read-only root file system with neither /dev/shm nor /tmp writable: what tempfile says.
    script = (
        "import sys\n"
        "from service.server import supervisor\n"
        "def unwritable():\n"
        "    raise FileNotFoundError(2, \"No usable temporary directory found in ['/tmp']\")\n"
        "supervisor.run_dir = unwritable\n"
        "sys.exit(supervisor.main())\n"
    )
    env = {
        **os.environ,
        "SERVE_WEIGHTS": str(tiny_model_file),
        "SERVE_PORT": str(free_port()),
        "SERVE_GRPC_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "CRITICAL service.supervisor: no run directory: [Errno 2] No usable" in done.stderr
    assert "a writable /dev/shm or temporary directory" in done.stderr


@pytest.mark.parametrize("holder", ["another program", "a copy of this service"])
def test_a_port_in_use_stops_the_pod_with_one_line_naming_its_setting(tiny_model_file, holder):
    for setting in ("SERVE_PORT", "SERVE_GRPC_PORT"):
        with socket.socket() as taken:
            if holder == "a copy of this service":
                # Its front ends listen with SO_REUSEPORT, which would let a second copy bind
                # beside them and take a share of the connections.
                taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            code, out = _start({"SERVE_WEIGHTS": str(tiny_model_file), setting: str(port)})
        assert code == 1 and "Traceback" not in out, out[-3000:]
        refusals = [line for line in out.splitlines() if "CRITICAL" in line]
        assert len(refusals) == 1, out[-3000:]
        assert f"cannot listen on 127.0.0.1:{port} (SERVE_HOST, {setting}): " in refusals[0]
        assert "Address already in use" in refusals[0]


def _time_wait_on_a_free_port() -> int:
    """A port whose last connection the server side closed first: it lingers in TIME_WAIT, as
    the last run's connections do when the service restarts after a drain."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()
        client.close()
    return port


def test_the_service_restarts_on_ports_whose_last_connections_linger(tiny_model_file, tmp_path):
    port, grpc_port = _time_wait_on_a_free_port(), _time_wait_on_a_free_port()
    srv = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_PORT": str(port),
            "SERVE_GRPC_PORT": str(grpc_port),
        },
        tmp_path / "log",
    )
    try:
        assert httpx.get(srv.url + "/readyz").status_code == 200
    finally:
        stop_server(srv)


def test_missing_feature_extractor_weights_name_the_command_that_fetches_them(
    tiny_model_file, tmp_path
):
    # examples/pipelines.yaml's backbone reads the _notop file, which only `--notop` fetches.
    notop = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if (Path("/tmp/.keras/models") / notop).is_file():
        pytest.skip("this machine's shared Keras cache has the file")
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(
        "pipelines:\n"
        "  features:\n"
        "    stages:\n"
        "      - kind: decode\n"
        "      - {kind: model, name: backbone, arch: resnet50, weights: imagenet,\n"
        "         include_top: false, pooling: avg}\n"
        "      - kind: topk\n"
    )
    server = start_server(
        {
            "SERVE_WEIGHTS": str(tiny_model_file),
            "SERVE_PIPELINES_FILE": str(pipelines),
            "SERVE_STRICT": "true",
            "KERAS_HOME": str(tmp_path / "keras"),  # an empty cache
        },
        tmp_path / "log",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            state = {
                p["name"]: p for p in httpx.get(server.url + "/v1/pipelines").json()["pipelines"]
            }
            if state["features"]["state"] == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stop_server(server)
    error = state["features"]["error"]
    assert notop in error, error
    assert "`python -m service.model.fetch_weights --model resnet50 --notop`" in error, error
