"""`python -m service.cluster` with the real `kubernetes` client against a stand-in API server
on loopback (tests/cluster/fake_kube.py). No cluster here: this proves the CLI's requests and
its reading of the answers, not the behaviour of a real API server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.cluster.__main__ import main
from service.cluster.doctor import tolerates
from tests.cluster.fake_kube import FakeKube, Served, daemonset, deployment, event, node, pod

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "resnet-serve"
GKE_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
L4 = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
SERVER = {"app.kubernetes.io/instance": "rel", "app.kubernetes.io/component": "server"}


def gke_cluster() -> FakeKube:
    fk = FakeKube()
    fk.nodes = [
        node("cpu-1", 0, {}, []),
        node("gpu-a", 1, L4, [GKE_TAINT]),
        node("gpu-b", 1, L4, [GKE_TAINT]),
    ]
    fk.pods = [
        pod("other-0", "ml", "gpu-b", {"app": "other"}, gpus=1),
        pod("done-0", "ml", "gpu-a", {"app": "batch"}, gpus=1, phase="Succeeded"),
    ]
    fk.daemonsets = [daemonset("nvidia-gpu-device-plugin-small", "kube-system", 2, 2)]
    return fk


@pytest.fixture
def kube(tmp_path):
    """(fake, run) where run(*args) -> (exit code, output) of the CLI against the fake."""
    fake = gke_cluster()
    with Served(fake, tmp_path) as served:

        def run(*args: str) -> int:
            return main(["--kubeconfig", str(served.kubeconfig), "-n", "serving", *args])

        run.kubeconfig = served.kubeconfig  # type: ignore[attr-defined]
        yield fake, run


def out_of(capsys) -> str:
    return capsys.readouterr().out


def values_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "extra.yaml"
    path.write_text(text)
    return str(path)


def test_doctor_ok_on_a_gke_gpu_pool_with_the_gke_values(kube, tmp_path, capsys):
    fake, run = kube
    extra = values_file(tmp_path, "replicaCount: 1\n")
    code = run("doctor", "--chart", str(CHART), "-f", str(CHART / "values-gke.yaml"), "-f", extra)
    out = out_of(capsys)
    assert code == 0, out
    assert "Kubernetes v1.33.4" in out
    assert "gpu-a: 1 allocatable, 1 free" in out  # the Succeeded pod's GPU is not counted
    assert "gpu-b: 1 allocatable, 0 free" in out
    assert "nvidia.com/gpu=present:NoSchedule" in out
    assert "cpu-1" not in out
    assert "kube-system/nvidia-gpu-device-plugin-small 2/2 ready" in out
    assert out.rstrip().endswith("doctor: ok")
    assert any(r.startswith("/api/v1/pods?") and "status.phase" in r for r in fake.requests)


def test_doctor_counts_gpus_the_release_wants_against_free_ones(kube, capsys):
    _, run = kube
    # Chart defaults: replicaCount 2 x gpu.count 1; one of the two GPUs is taken.
    code = run("doctor", "--chart", str(CHART), "-f", str(CHART / "values-gke.yaml"))
    out = out_of(capsys)
    assert code == 1
    assert "PROBLEM: 2 nvidia.com/gpu wanted (replicaCount x gpu.count) but 1 free" in out


def test_doctor_says_the_default_values_do_not_tolerate_gpu_taints(kube, capsys):
    _, run = kube
    code = run("doctor", "--chart", str(CHART), "-f", str(CHART / "values.yaml"))
    out = out_of(capsys)
    assert code == 1
    assert "note: gpu-a: the values do not tolerate nvidia.com/gpu=present:NoSchedule" in out
    assert "tolerate the taints of no GPU node" in out


def test_doctor_finds_a_selector_that_matches_no_gpu_node(kube, tmp_path, capsys):
    _, run = kube
    extra = values_file(tmp_path, "nodeSelector: {cloud.google.com/gke-accelerator: nvidia-h100}\n")
    code = run("doctor", "--chart", str(CHART), "-f", str(CHART / "values-gke.yaml"), "-f", extra)
    assert code == 1
    assert "no GPU node matches the values' nodeSelector" in out_of(capsys)


def test_doctor_without_gpu_nodes_or_plugin(kube, capsys):
    fake, run = kube
    fake.nodes = [node("cpu-1", 0, {}, [])]
    fake.daemonsets = [daemonset("nvidia-device-plugin-daemonset", "gpu-operator", 3, 1)]
    code = run("doctor")
    out = out_of(capsys)
    assert code == 1
    assert "no node offers nvidia.com/gpu" in out
    assert "device plugin gpu-operator/nvidia-device-plugin-daemonset: 1/3 ready" in out
    fake.daemonsets = []
    run("doctor")
    assert "no NVIDIA device plugin DaemonSet found" in out_of(capsys)


def test_doctor_ok_beside_device_plugin_daemonsets_that_schedule_nothing(kube, tmp_path, capsys):
    """GKE ships one plugin DaemonSet per node size and image, and only the fitting one runs;
    the GPU Operator's MPS daemon runs only with MPS on."""
    fake, run = kube
    fake.daemonsets += [
        daemonset("nvidia-gpu-device-plugin-medium-cos", "kube-system", 0, 0),
        daemonset("nvidia-device-plugin-mps-control-daemon", "gpu-operator", 0, 0),
    ]
    extra = values_file(tmp_path, "replicaCount: 1\n")
    code = run("doctor", "--chart", str(CHART), "-f", str(CHART / "values-gke.yaml"), "-f", extra)
    out = out_of(capsys)
    assert code == 0 and "PROBLEM" not in out, out
    fake.daemonsets = [daemonset("nvidia-gpu-device-plugin-medium-cos", "kube-system", 0, 0)]
    assert run("doctor") == 1
    assert "no NVIDIA device plugin runs on any node" in out_of(capsys)


def test_doctor_drops_a_key_set_to_null_as_helm_does(kube, tmp_path, capsys):
    """values.yaml says to set kubernetes.io/arch to null to drop the default selector."""
    _, run = kube
    extra = values_file(tmp_path, "replicaCount: 1\nnodeSelector: {kubernetes.io/arch: null}\n")
    code = run("doctor", "--chart", str(CHART), "-f", str(CHART / "values-gke.yaml"), "-f", extra)
    out = out_of(capsys)
    assert code == 0 and "nodeSelector" not in out, out


def test_unreachable_cluster_exits_2(tmp_path, capsys):
    import yaml

    from service.cluster.__main__ import main as cli
    from tests.cluster.fake_kube import kubeconfig

    path = tmp_path / "kubeconfig"
    with __import__("socket").socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path.write_text(yaml.safe_dump(kubeconfig(f"http://127.0.0.1:{port}")))
    assert cli(["--kubeconfig", str(path), "doctor"]) == 2
    assert "NOT reachable" in out_of(capsys)
    assert cli(["--kubeconfig", str(tmp_path / "missing"), "doctor"]) == 2


@pytest.mark.parametrize(
    ("toleration", "expected"),
    [
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Exists"}, True),
        ({"operator": "Exists"}, True),
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}, True),
        ({"key": "nvidia.com/gpu", "value": "absent", "effect": "NoSchedule"}, False),
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "dedicated", "operator": "Exists"}, False),
        ({"operator": "Equal"}, False),
    ],
)
def test_toleration_rule(toleration, expected):
    assert tolerates(toleration, GKE_TAINT) is expected


def test_wait_follows_a_rollout_to_the_end(kube, capsys):
    fake, run = kube
    fake.deployment_states = [
        [deployment("rel-resnet-serve", "serving", "rel", 2, 1, 0)],
        [deployment("rel-resnet-serve", "serving", "rel", 2, 2, 1)],
        [deployment("rel-resnet-serve", "serving", "rel", 2, 2, 2)],
    ]
    code = run("wait", "rel", "--timeout", "60", "--interval", "0.05")
    out = out_of(capsys)
    assert code == 0, out
    assert "1/2 updated, 0 ready" in out and "2/2 updated, 2 ready" in out
    assert "release rel: rolled out" in out
    assert any("labelSelector=app.kubernetes.io/instance=rel" in r for r in fake.requests)


def test_wait_reports_pods_not_ready_with_their_events(kube, capsys):
    fake, run = kube
    fake.deployment_states = [[deployment("rel-resnet-serve", "serving", "rel", 2, 2, 1)]]
    fake.pods += [
        pod("rel-resnet-serve-1", "serving", "gpu-a", SERVER, gpus=1),
        pod(
            "rel-resnet-serve-2",
            "serving",
            None,
            SERVER,
            ready=False,
            phase="Pending",
            waiting=("ImagePullBackOff", 'Back-off pulling image "resnet-serve:0.1.0"'),
        ),
    ]
    fake.events = [
        event(
            "serving",
            "rel-resnet-serve-2",
            "FailedScheduling",
            "0/3 nodes: 1 Insufficient nvidia.com/gpu",
        ),
        event("serving", "rel-resnet-serve-1", "Pulled", "pulled", kind="Normal"),
    ]
    code = run("wait", "rel", "--timeout", "0.2", "--interval", "0.05")
    out = out_of(capsys)
    assert code == 1
    assert "not rolled out after 0.2 s" in out
    assert "pod rel-resnet-serve-2 (Pending) not ready:" in out
    assert "server: ImagePullBackOff Back-off pulling image" in out
    assert "event: Warning FailedScheduling: 0/3 nodes: 1 Insufficient nvidia.com/gpu" in out
    assert "rel-resnet-serve-1 (" not in out  # the ready pod is not reported


def test_wait_stops_at_a_progress_deadline(kube, capsys):
    fake, run = kube
    fake.deployment_states = [
        [
            deployment(
                "rel-resnet-serve", "serving", "rel", 2, 1, 1, failed='ReplicaSet "x" has timed out'
            )
        ]
    ]
    code = run("wait", "rel", "--timeout", "3600", "--interval", "0.05")
    assert code == 1
    assert 'failed: ReplicaSet "x" has timed out' in out_of(capsys)


def test_smoke_classifies_through_a_port_forward_to_the_real_service(kube, server, capsys):
    fake, run = kube
    fake.pods += [
        pod("rel-resnet-serve-0", "serving", "gpu-a", SERVER, ready=False),
        pod("rel-resnet-serve-1", "serving", "gpu-a", SERVER),
    ]
    host, port = server.url.removeprefix("http://").split(":")
    fake.forward_to = (host, int(port))
    code = run("smoke", "rel")
    out = out_of(capsys)
    assert code == 0, out
    assert "smoke: ok through pod rel-resnet-serve-1" in out
    # The forward went through the API server's pod portforward endpoint to the http port.
    assert any(
        r.startswith("/api/v1/namespaces/serving/pods/rel-resnet-serve-1/portforward")
        and "ports=8000" in r
        for r in fake.requests
    )


def test_forwarder_serves_several_connections(kube, server):
    from kubernetes import config

    from service.cluster.forward import Forwarder

    fake, run = kube
    host, port = server.url.removeprefix("http://").split(":")
    fake.forward_to = (host, int(port))
    api = config.new_client_from_config(config_file=str(run.kubeconfig))
    with Forwarder(api, "serving", "rel-resnet-serve-1", 8000) as fw:
        for _ in range(2):
            r = httpx.get(f"http://127.0.0.1:{fw.port}/v1/models", timeout=30)
            assert r.status_code == 200 and r.json()["models"][0]["name"]


def test_forwarder_follows_a_rollout_to_the_next_ready_pod(kube, server):
    from kubernetes import config

    from service.cluster.forward import Forwarder

    fake, run = kube
    fake.pods += [
        pod("rel-resnet-serve-old", "serving", "gpu-a", SERVER),
        pod("rel-resnet-serve-new", "serving", "gpu-b", SERVER, ready=False),
    ]
    host, port = server.url.removeprefix("http://").split(":")
    fake.forward_to = (host, int(port))
    api = config.new_client_from_config(config_file=str(run.kubeconfig))
    said: list[str] = []

    def forwarded_to() -> list[str]:
        return [r.split("/")[6] for r in fake.requests if "/portforward?" in r]

    with Forwarder(
        api, "serving", "rel-resnet-serve-old", 8000, release="rel", say=said.append
    ) as fw:
        url = f"http://127.0.0.1:{fw.port}/v1/models"
        assert httpx.get(url, timeout=30).status_code == 200
        # The rollout: the new pod becomes ready, the old one goes away.
        fake.pods[-1] = pod("rel-resnet-serve-new", "serving", "gpu-b", SERVER)
        fake.pods.pop(-2)
        assert httpx.get(url, timeout=30).status_code == 200
        assert httpx.get(url, timeout=30).status_code == 200
        assert forwarded_to() == [
            "rel-resnet-serve-old",
            "rel-resnet-serve-new",
            "rel-resnet-serve-new",
        ]
        assert said == [
            "now forwarding to rel-resnet-serve-new:8000 (rel-resnet-serve-old is not ready)"
        ]
        # No ready pod: the connection is closed and the reason said, the forward goes on.
        fake.pods[-1] = pod("rel-resnet-serve-new", "serving", "gpu-b", SERVER, ready=False)
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=30)
        assert said[-1] == "connection refused: no ready pod of release rel in serving (1 found)"
        fake.pods[-1] = pod("rel-resnet-serve-new", "serving", "gpu-b", SERVER)
        assert httpx.get(url, timeout=30).status_code == 200


def test_forwarder_without_a_release_stays_on_its_pod(kube, server):
    from kubernetes import config

    from service.cluster.forward import Forwarder

    fake, run = kube
    fake.pods += [pod("rel-resnet-serve-1", "serving", "gpu-a", SERVER, ready=False)]
    host, port = server.url.removeprefix("http://").split(":")
    fake.forward_to = (host, int(port))
    api = config.new_client_from_config(config_file=str(run.kubeconfig))
    with Forwarder(api, "serving", "rel-resnet-serve-1", 8000) as fw:
        assert httpx.get(f"http://127.0.0.1:{fw.port}/v1/models", timeout=30).status_code == 200
    assert any("/pods/rel-resnet-serve-1/portforward" in r for r in fake.requests)


def test_smoke_without_a_ready_pod_fails(kube, capsys):
    fake, run = kube
    fake.pods += [pod("rel-resnet-serve-0", "serving", "gpu-a", SERVER, ready=False)]
    assert run("smoke", "rel") == 1
    assert "no ready pod of release rel in serving (1 found)" in out_of(capsys)


def _deployment(wanted, total, updated, available, generation=2, observed=2, deadline=False):
    """A Deployment as the Kubernetes client models it (the fields ``state_of`` reads)."""
    from types import SimpleNamespace as NS

    conditions = [
        NS(type="Progressing", reason="ProgressDeadlineExceeded", message="timed out progressing")
    ]
    return NS(
        metadata=NS(name="rel-resnet-serve", generation=generation),
        spec=NS(replicas=wanted),
        status=NS(
            replicas=total,
            updated_replicas=updated,
            ready_replicas=available,
            available_replicas=available,
            observed_generation=observed,
            conditions=conditions if deadline else [],
        ),
    )


@pytest.mark.parametrize(
    ("wanted", "total", "updated", "available", "done"),
    [
        # The chart surges (maxUnavailable 0): the old pod stays available while the new one
        # starts or crash-loops. Available alone would call these rolled out.
        (1, 2, 1, 1, False),
        (2, 3, 2, 2, False),
        (2, 2, 2, 1, False),
        (2, 2, 2, 2, True),
    ],
)
def test_a_rollout_is_done_once_no_old_pod_is_left_and_the_new_ones_are_available(
    wanted, total, updated, available, done
):
    from service.cluster.rollout import state_of

    assert state_of(_deployment(wanted, total, updated, available)).done is done


def test_a_past_rollouts_deadline_is_not_this_ones_failure():
    """Right after an upgrade the controller has not seen the new generation yet: the
    Progressing condition it shows is the last rollout's."""
    from service.cluster.rollout import state_of

    old = state_of(_deployment(1, 1, 0, 1, generation=3, observed=2, deadline=True))
    assert not old.failed and not old.done
    now = state_of(_deployment(1, 2, 1, 1, generation=3, observed=3, deadline=True))
    assert now.failed == "timed out progressing"
