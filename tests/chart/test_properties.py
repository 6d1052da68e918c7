"""Properties of the rendered objects that matter on a GPU cluster."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from service.model.architectures import ARCHITECTURES
from tests.chart.chart_helpers import (
    CHART,
    CI_VALUES,
    GPU_PLATFORM_VALUES,
    PLATFORM_VALUES,
    env_of,
    find,
    helm,
    one,
    pod_specs,
    render,
    server_container,
)

ALL_VALUES = [(), *[(v,) for v in PLATFORM_VALUES + CI_VALUES]]
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
IDS = lambda v: v[0] if v else "defaults"  # noqa: E731


def load(name: str) -> dict:
    return yaml.safe_load((CHART / name).read_text())


@pytest.mark.parametrize("values_file", GPU_PLATFORM_VALUES)
def test_gpu_files_request_gpus_and_tolerate_the_pool_taint(values_file):
    values = load(values_file)
    objs = render((values_file,))
    container = server_container(objs)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"] == values["tolerations"] and pod["tolerations"]
    assert any(t["effect"] == "NoSchedule" for t in pod["tolerations"])
    # The file's node selector (if any) with the chart's architecture pin; EKS selects by the
    # GPU request alone.
    arch = {"kubernetes.io/arch": "amd64"}
    assert pod["nodeSelector"] == {**arch, **values.get("nodeSelector", {})}
    assert pod.get("affinity") == values.get("affinity")
    assert (
        one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
        == "resnet-serve:0.1.0"
    )


def node_terms(values_file: str) -> list[dict[str, tuple[str, ...]]]:
    """The required node affinity terms of a values file, as {label: allowed values}."""
    affinity = load(values_file).get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
    return [
        {e["key"]: tuple(e.get("values", [])) for e in term["matchExpressions"]}
        for term in terms.get("nodeSelectorTerms", [])
    ]


def test_platform_files_match_each_providers_gpu_conventions():
    tol = lambda f: {(t["key"], t.get("value"), t["effect"]) for t in load(f)["tolerations"]}  # noqa: E731
    assert ("sku", "gpu", "NoSchedule") in tol("values-aks.yaml")
    # AKS's own GPU label; `accelerator` is in AKS's list of deprecated labels.
    assert load("values-aks.yaml")["nodeSelector"] == {"kubernetes.azure.com/accelerator": "nvidia"}
    assert ("nvidia.com/gpu", "present", "NoSchedule") in tol("values-gke.yaml")
    assert "cloud.google.com/gke-accelerator" in load("values-gke.yaml")["nodeSelector"]
    assert ("nvidia.com/gpu", None, "NoSchedule") in tol("values-eks.yaml")
    # EKS: no pinned instance type and no GPU label (managed node groups carry none without
    # GPU Feature Discovery): the nvidia.com/gpu request and the default arch pin decide.
    eks = load("values-eks.yaml")
    assert "instance-type" not in str(eks) and "affinity" not in eks
    pod = one(render(("values-eks.yaml",)), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert "affinity" not in pod
    operator = load("values-gpu-operator.yaml")
    assert operator["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    pod = one(render(("values-gpu-operator.yaml",)), "Deployment")["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"


def test_gpu_resource_name_and_count_are_configurable():
    container = server_container(render(sets=("gpu.resourceName=amd.com/gpu",)))
    assert container["resources"]["limits"]["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["limits"]["memory"] == "12Gi"  # user limits kept


def test_cpu_only_file_has_no_gpu_no_tolerations_and_the_cpu_image():
    objs = render(("values-cpu.yaml",))
    container = server_container(objs)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert not any("gpu" in k for k in container["resources"].get("limits", {}))
    assert "tolerations" not in pod and "runtimeClassName" not in pod
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert container["image"] == "resnet-serve:0.1.0-cpu"


def test_image_tag_and_digest():
    assert server_container(render(sets=("image.tag=1.2.3",)))["image"] == "resnet-serve:1.2.3"
    digest = "sha256:" + "a" * 64
    assert (
        server_container(render(sets=(f"image.digest={digest}",)))["image"]
        == f"resnet-serve@{digest}"
    )


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_probes_fit_a_slow_model_load(values):
    container = server_container(render(values))
    startup, ready, live = (
        container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")
    )
    if values and load(values[0]).get("probes", {}).get("grpc"):
        # Readiness semantics (/readyz) under service "", liveness (/healthz) under "liveness".
        assert startup["grpc"] == ready["grpc"] == {"port": 8001, "service": ""}
        assert live["grpc"] == {"port": 8001, "service": "liveness"}
    else:
        assert startup["httpGet"] == {"path": "/readyz", "port": "http"}
        assert ready["httpGet"] == {"path": "/readyz", "port": "http"}
        assert live["httpGet"] == {"path": "/healthz", "port": "http"}
    # Load + warm-up of a ResNet on a cold node can take minutes: allow at least five.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in container["ports"]


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_rollouts_and_shutdowns_never_drop_requests(values):
    objs = render(values)
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(objs)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) > 0
    env = env_of(container)
    graceful = float(env["SERVE_GRACEFUL_TIMEOUT_S"])
    # preStop pause + the service's own drain must end before SIGKILL.
    assert int(sleep[1]) + graceful < pod["terminationGracePeriodSeconds"]
    assert graceful > 0


def test_drain_budget_fails_to_render_when_it_cannot_fit():
    out = helm(
        "template",
        "rel",
        str(CHART),
        "--set",
        "terminationGracePeriodSeconds=12",
        "--set",
        "preStopSleepSeconds=10",
        check=False,
    )
    assert out.returncode != 0 and "must exceed preStopSleepSeconds" in out.stderr


def test_replicas_are_left_to_the_autoscaler():
    assert one(render(), "Deployment")["spec"]["replicas"] == 2
    for values in (("ci/hpa-cpu-values.yaml",), ("ci/keda-values.yaml",)):
        assert "replicas" not in one(render(values), "Deployment")["spec"]


def test_hpa_scales_on_cpu_or_the_in_flight_gauge():
    hpa = one(render(("ci/hpa-cpu-values.yaml",)), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    hpa = one(render(("ci/hpa-custom-metric-values.yaml",)), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "serve_images_in_flight"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "48"}


def test_the_in_flight_gauge_the_autoscalers_use_exists_in_the_service():
    from prometheus_client import generate_latest

    from service.metrics import Metrics

    exposed = generate_latest(Metrics().registry).decode()
    assert "\nserve_images_in_flight " in exposed or exposed.startswith("serve_images_in_flight")
    assert (
        "serve_images_in_flight"
        in one(render(("ci/keda-values.yaml",)), "ScaledObject", None)["spec"]["triggers"][0][
            "metadata"
        ]["query"]
    )


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_security_context_on_every_pod_and_container(values):
    objs = render(values)
    for name, pod in pod_specs(objs):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "add" not in sc["capabilities"], (name, c["name"])
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, (name, c["name"])
            assert c["resources"].get("requests") or c["resources"].get("limits"), (name, c["name"])
    for sa in find(objs, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


def test_read_only_root_gets_a_writable_tmp():
    objs = render()
    container = server_container(objs)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]


def test_preprocessing_workers_get_a_shared_memory_volume():
    """The workers' shared-memory slots need more than a container's default 64 MiB /dev/shm
    when a node runs many workers; a memory-backed emptyDir with a limit replaces it."""
    objs = render(sets=("shmSizeLimit=512Mi",))
    container = server_container(objs)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    shm = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"}}
    assert shm in pod["volumes"]


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_standard_labels_on_every_object(values):
    for obj in render(values):
        labels = obj["metadata"]["labels"]
        for key in STANDARD_LABELS:
            assert labels.get(key), (obj["kind"], obj["metadata"]["name"], key)
        assert labels["app.kubernetes.io/instance"] == "rel"
        assert labels["app.kubernetes.io/version"] == "0.1.0"


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_selectors_agree_between_deployment_service_pdb_hpa_and_policies(values):
    objs = render(values)
    deployment = one(objs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert one(objs, "Service")["spec"]["selector"] == selector
    for pdb in find(objs, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"] == selector
    for hpa in find(objs, "HorizontalPodAutoscaler") + find(objs, "ScaledObject"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    for policy in find(objs, "NetworkPolicy", "server"):
        assert policy["spec"]["podSelector"]["matchLabels"] == selector
    for spread in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        assert spread["labelSelector"]["matchLabels"] == selector
    # No other pod of the release (Redis, the test pod) is selected by the server's selector.
    for other in objs:
        if other is deployment or other["kind"] not in ("Deployment", "Pod"):
            continue
        labels = (
            other["spec"].get("template", {}).get("metadata", {}).get("labels")
            or other["metadata"]["labels"]
        )
        assert not selector.items() <= labels.items(), other["metadata"]["name"]


def test_pdb_lets_one_pod_go_at_a_time():
    assert one(render(), "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": one(render(), "Deployment")["spec"]["selector"]["matchLabels"]},
    }


def test_pods_spread_across_nodes():
    (spread,) = one(render(), "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1


@pytest.mark.parametrize(
    "values, keras_home, weights",
    [
        ((), "/opt/keras", "imagenet"),
        (("ci/weights-pvc-values.yaml",), "/var/lib/resnet-serve/weights", "imagenet"),
        (
            ("ci/weights-url-values.yaml",),
            "/var/lib/resnet-serve/weights",
            "/var/lib/resnet-serve/weights/models/custom.weights.h5",
        ),
    ],
    ids=["image", "pvc", "url"],
)
def test_weights_sources(values, keras_home, weights):
    objs = render(values)
    container = server_container(objs)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    env = env_of(container)
    assert env["KERAS_HOME"] == keras_home and env["SERVE_WEIGHTS"] == weights
    assert env["SERVE_STRICT"] == "true"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    if keras_home == "/opt/keras":
        assert "weights" not in volumes and "initContainers" not in pod
        return
    assert mounts["weights"]["mountPath"] == keras_home and mounts["weights"]["readOnly"] is True
    if "pvc" in values[0]:
        assert volumes["weights"]["persistentVolumeClaim"] == {
            "claimName": "resnet-weights",
            "readOnly": True,
        }
        assert mounts["weights"]["subPath"] == "keras"
    else:
        (init,) = pod["initContainers"]
        assert volumes["weights"]["emptyDir"] == {"sizeLimit": "2Gi"}
        args = dict(zip(init["args"][::2], init["args"][1::2], strict=True))
        assert args["--dest"] == weights and args["--url"].startswith("https://")
        assert len(args["--sha256"]) == 64
        assert init["command"][-1] == "/opt/resnet-serve/scripts/fetch_weights_url.py"
        assert {m["mountPath"] for m in init["volumeMounts"]} >= {
            keras_home,
            "/opt/resnet-serve/scripts",
        }


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_downloaded_imagenet_weights_go_where_keras_looks_for_the_arch(arch):
    """With `weights.file` empty the server loads `imagenet`, from Keras' cache file of
    `model.arch`: the init container writes the download there."""
    sets = ("weights.source=url", "weights.url.href=https://example.org/w.h5", f"model.arch={arch}")
    objs = render(sets=sets)
    (init,) = one(objs, "Deployment")["spec"]["template"]["spec"]["initContainers"]
    args = dict(zip(init["args"][::2], init["args"][1::2], strict=True))
    assert env_of(server_container(objs))["SERVE_WEIGHTS"] == "imagenet"
    weights_file = ARCHITECTURES[arch].weights_file()
    assert args["--dest"] == f"/var/lib/resnet-serve/weights/models/{weights_file}"


@pytest.mark.parametrize("source", ["pvc", "url"])
def test_weights_source_without_its_location_fails_to_render(source):
    out = helm("template", "rel", str(CHART), "--set", f"weights.source={source}", check=False)
    assert out.returncode != 0 and f"weights.source={source} needs" in out.stderr


def test_redis_modes():
    internal = render(("ci/redis-internal-netpol-values.yaml",))
    redis = one(internal, "Deployment", "redis")
    url = env_of(server_container(internal))["SERVE_REDIS_URL"]
    assert url == "redis://rel-resnet-serve-redis:6379/0"
    assert one(internal, "Service", "redis")["metadata"]["name"] == "rel-resnet-serve-redis"
    assert redis["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
    redis_policy = one(internal, "NetworkPolicy", "redis")
    (rule,) = redis_policy["spec"]["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"

    external = render(("ci/redis-external-values.yaml",))
    assert env_of(server_container(external))["SERVE_REDIS_URL"] == {
        "secretKeyRef": {"name": "resnet-redis", "key": "url"}
    }
    assert not find(external, "Deployment", "redis")
    env_from = server_container(external)["envFrom"]
    assert {"secretRef": {"name": "resnet-serve-secrets"}} in env_from
    assert {"secretRef": {"name": "rel-resnet-serve"}} in env_from
    assert one(external, "Secret")["stringData"] == {"SERVE_LOG_LEVEL": "info"}


def test_network_policy_lets_in_only_the_ports_the_test_pod_and_prometheus():
    objs = render(("ci/redis-internal-netpol-values.yaml",))
    policy = one(objs, "NetworkPolicy", "server")
    clients, scrapers = policy["spec"]["ingress"]
    assert clients["ports"] == [
        {"port": "http", "protocol": "TCP"},
        {"port": "grpc", "protocol": "TCP"},
    ]
    # /metrics is served on the HTTP port only.
    assert scrapers["ports"] == [{"port": "http", "protocol": "TCP"}]
    test_pod = one(objs, "Pod", "test")
    selectors = [p["podSelector"]["matchLabels"] for p in clients["from"] if "podSelector" in p]
    assert any(s.items() <= test_pod["metadata"]["labels"].items() for s in selectors)
    assert scrapers["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert {"port": 53, "protocol": "UDP"} in policy["spec"]["egress"][0]["ports"]
    # No callbacks configured: no egress beyond DNS and Redis.
    assert len(policy["spec"]["egress"]) == 2


def checksum(objs: list[dict]) -> str:
    return one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_checksum_rolls_the_pods_when_the_secret_or_the_scripts_change(tmp_path):
    base = checksum(render(sets=("secretSettings.SERVE_AUTH_TOKENS=a",)))
    assert checksum(render(sets=("secretSettings.SERVE_AUTH_TOKENS=b",))) != base
    # A chart whose weights script differs (as after an upgrade of the chart) rolls too.
    copy = tmp_path / "resnet-serve"
    shutil.copytree(CHART, copy)
    script = copy / "files" / "fetch_weights_url.py"
    script.write_text(script.read_text() + "\n# changed\n")
    changed = helm("template", "rel", str(copy), "--namespace", "serving").stdout
    original = helm("template", "rel", str(CHART), "--namespace", "serving").stdout
    assert checksum(list(yaml.safe_load_all(changed))) != checksum(
        list(yaml.safe_load_all(original))
    )


def test_settings_configmap_feeds_the_server_and_rolls_it_on_change():
    objs = render()
    cm = one(objs, "ConfigMap")
    assert cm["data"] == {
        "SERVE_LOG_FORMAT": "json",
        "SERVE_MAX_BATCH_SIZE": "32",
        "SERVE_MAX_BATCH_DELAY_MS": "2",
    }
    assert {"configMapRef": {"name": cm["metadata"]["name"]}} in server_container(objs)["envFrom"]
    before = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"
    ]
    after = one(render(sets=("settings.SERVE_MAX_BATCH_SIZE=16",)), "Deployment")["spec"][
        "template"
    ]["metadata"]["annotations"]["checksum/config"]
    assert before != after


def test_helm_test_hook_waits_for_readiness_and_classifies():
    objs = render()
    pod = one(objs, "Pod", "test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python3", "/opt/resnet-serve/scripts/helm_test.py"]
    args = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
    assert args["--url"] == "http://rel-resnet-serve:80" and args["--ready-timeout"] == "600"
    scripts = next(o for o in objs if o["metadata"]["name"] == "rel-resnet-serve-scripts")
    assert scripts["data"]["helm_test.py"] == (CHART / "files" / "helm_test.py").read_text()


@pytest.mark.parametrize("values_file", GPU_PLATFORM_VALUES)
def test_helm_test_pod_pulls_a_small_image_off_the_gpu_nodes(values_file):
    """The test pod needs only Python: a small image, on any node, with the release's pull
    secrets; not the multi-GB GPU image pulled onto a system node."""
    objs = render((values_file,), ("imagePullSecrets[0].name=regcred",))
    pod = one(objs, "Pod", "test")["spec"]
    server = server_container(objs)
    (container,) = pod["containers"]
    assert container["image"] != server["image"] and container["image"].startswith("python:3")
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert not any("gpu" in k for k in container["resources"]["limits"])


@pytest.mark.parametrize("values_file", GPU_PLATFORM_VALUES)
def test_helm_test_pod_with_the_server_image_goes_where_that_image_is(values_file):
    objs = render((values_file,), ("tests.image.repository=", "imagePullSecrets[0].name=regcred"))
    test_pod = one(objs, "Pod", "test")["spec"]
    server_pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert test_pod["containers"][0]["image"] == server_container(objs)["image"]
    assert test_pod["imagePullSecrets"] == [{"name": "regcred"}]
    for key in ("tolerations", "nodeSelector", "affinity"):
        assert test_pod.get(key) == server_pod.get(key), key


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_helm_test_waits_as_long_as_the_startup_probe_and_helm_waits_longer(values):
    objs = render(values)
    startup = server_container(objs)["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    args = one(objs, "Pod", "test")["spec"]["containers"][0]["args"]
    ready_timeout = int(args[args.index("--ready-timeout") + 1])
    assert ready_timeout >= budget
    notes = notes_of(values)
    timeout = re.search(r"helm test \S+ .*--timeout (\d+)s", notes)
    assert timeout and int(timeout.group(1)) > ready_timeout, notes


def notes_of(values: tuple[str, ...] = (), release: str = "demo") -> str:
    files = [a for v in values for a in ("-f", str(CHART / v))]
    out = helm("install", release, str(CHART), "--dry-run=client", "--namespace", "ml", *files)
    return out.stdout.split("NOTES:", 1)[1]


def test_notes_print_the_exact_port_forward_command():
    lines = [line.strip() for line in notes_of().splitlines()]
    assert "kubectl --namespace ml port-forward service/demo-resnet-serve 8080:80" in lines
    assert "curl -s http://127.0.0.1:8080/readyz" in lines
    assert "helm test demo --namespace ml --logs --timeout 900s" in lines
