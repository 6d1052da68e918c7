"""How the server pod is sized on a large GPU node: what it counts as its CPUs, its /dev/shm for
the preprocessing workers, its ephemeral-storage requests, its QoS class, and the kernel cache
that Hopper GPUs fill at first start."""

from __future__ import annotations

import math
import re

import pytest

from service.engine import worker_pool
from service.server import frontend
from service.settings import Settings
from tests.chart.chart_helpers import (
    CI_VALUES,
    PLATFORM_VALUES,
    find,
    one,
    pod_specs,
    render,
    server_container,
)

ALL_VALUES = [(), *[(v,) for v in PLATFORM_VALUES + CI_VALUES]]
IDS = lambda v: v[0] if v else "defaults"  # noqa: E731
UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 1e-3}
UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(q) -> float:
    """A Kubernetes quantity as a number (bytes, or cores)."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m, q
    return float(m.group(1)) * UNITS[m.group(2)]


def server_pod(objs):
    return one(objs, "Deployment")["spec"]["template"]["spec"]


def env_entry(container: dict, name: str) -> dict | None:
    return next((e for e in container.get("env", []) if e["name"] == name), None)


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_serve_cpus_is_the_pods_cpu_request_not_the_node(values):
    container = server_container(render(values))
    entry = env_entry(container, "SERVE_CPUS")
    assert entry == {
        "name": "SERVE_CPUS",
        "valueFrom": {
            "resourceFieldRef": {
                "containerName": container["name"],
                "resource": "requests.cpu",
                # 1: whole CPUs, rounded up by the kubelet (500m -> 1).
                "divisor": "1",
            }
        },
    }
    assert "cpu" in container["resources"]["requests"]


def test_an_explicit_serve_cpus_or_the_switch_wins_over_the_request():
    """`env` beats `envFrom`: a SERVE_CPUS in settings would be overridden silently."""
    objs = render(sets=("settings.SERVE_CPUS=6",))
    assert env_entry(server_container(objs), "SERVE_CPUS") is None
    assert one(objs, "ConfigMap")["data"]["SERVE_CPUS"] == "6"
    secret = server_container(render(sets=("secretSettings.SERVE_CPUS=6",)))
    assert env_entry(secret, "SERVE_CPUS") is None
    assert (
        env_entry(server_container(render(sets=("cpusFromRequest=false",))), "SERVE_CPUS") is None
    )


# What prometheus-client's multiprocess files of one process come to (a few pages each).
METRICS_FILES_BYTES = 1 << 20


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_dev_shm_holds_what_every_process_puts_there(values):
    """Per CPU the pod counts (SERVE_CPUS: the request rounded up) there is one front end with
    its arena of pixel slots (service/server/frontend.py), one cpu-stage worker with its two
    slots (service/engine/worker_pool.py), and their metrics files; with room to spare."""
    objs = render(values)
    container = server_container(objs)
    cpus = math.ceil(quantity(container["resources"]["requests"]["cpu"]))
    settings = Settings(model="resnet50")
    per_cpu = (
        frontend.ARENA_SLOTS * frontend.item_bytes(settings)
        + 2 * worker_pool.SLOT_BYTES
        + 2 * METRICS_FILES_BYTES
    )
    (shm,) = [v for v in server_pod(objs)["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert quantity(shm["emptyDir"]["sizeLimit"]) >= 2 * (cpus + 1) * per_cpu
    # It counts against the memory limit as it fills: a full /dev/shm must not OOM-kill.
    limit = container["resources"]["limits"]["memory"]
    assert quantity(shm["emptyDir"]["sizeLimit"]) < quantity(limit) / 8


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_every_pod_requests_the_ephemeral_storage_its_disk_volumes_can_fill(values):
    for name, pod in pod_specs(render(values)):
        for c in pod["containers"] + pod.get("initContainers", []):
            assert "ephemeral-storage" in c["resources"]["requests"], (name, c["name"])
        disk = sum(
            quantity(v["emptyDir"].get("sizeLimit", 0))
            for v in pod.get("volumes", [])
            if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
        )
        requested = sum(
            quantity(c["resources"]["requests"]["ephemeral-storage"]) for c in pod["containers"]
        )
        assert requested > disk, (name, requested, disk)


def pod_limit(pod: dict, resource: str) -> float | None:
    """The pod's limit of ``resource`` as the kubelet's eviction manager computes it
    (component-helpers ``resource.PodLimits``): the sum over the app containers, or an init
    container's own limit where that is larger; None when no container sets one."""

    def limit(c: dict) -> float | None:
        value = c.get("resources", {}).get("limits", {}).get(resource)
        return None if value is None else quantity(value)

    apps = [v for v in map(limit, pod["containers"]) if v is not None]
    inits = [v for v in map(limit, pod.get("initContainers", [])) if v is not None]
    if not apps and not inits:
        return None
    return max([sum(apps), *inits])


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_no_pods_ephemeral_storage_limit_is_below_what_its_disk_volumes_hold(values):
    """The kubelet evicts a pod whose containers and disk-backed emptyDirs together use more
    than its limit: an init container's small limit alone would be the whole pod's."""
    for name, pod in pod_specs(render(values)):
        limit = pod_limit(pod, "ephemeral-storage")
        disk = sum(
            quantity(v["emptyDir"].get("sizeLimit", 0))
            for v in pod.get("volumes", [])
            if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"
        )
        assert limit is None or limit > disk, (name, limit, disk)


def qos_class(pod: dict) -> str:
    """Kubernetes' QoS class of a pod spec (pkg/apis/core/helper/qos)."""
    containers = pod["containers"] + pod.get("initContainers", [])
    resources = [c.get("resources", {}) for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    for r in resources:
        requests, limits = r.get("requests", {}), r.get("limits", {})
        for key in ("cpu", "memory"):
            if key not in limits or quantity(requests.get(key, limits[key])) != quantity(
                limits[key]
            ):
                return "Burstable"
    return "Guaranteed"


@pytest.mark.parametrize("values", [(v,) for v in PLATFORM_VALUES if v != "values-cpu.yaml"])
def test_gpu_pods_are_not_evicted_for_memory_above_their_request(values):
    """The default (a judgement call, docs/DEPLOY.md "QoS"): Burstable without a CPU limit, but
    memory request = limit, so the kubelet never ranks the pod among those using more memory
    than they requested."""
    container = server_container(render(values))
    resources = container["resources"]
    assert quantity(resources["requests"]["memory"]) == quantity(resources["limits"]["memory"])
    assert "cpu" not in resources["limits"]


def test_guaranteed_qos_is_one_cpu_limit_away_even_with_the_weights_init_container():
    objs = render(("ci/kernel-cache-pvc-values.yaml",))
    pod = server_pod(objs)
    assert pod["initContainers"]
    assert qos_class(pod) == "Guaranteed"
    assert qos_class(server_pod(render())) == "Burstable"


def cache_mount(objs) -> tuple[dict, dict, dict]:
    pod = server_pod(objs)
    container = server_container(objs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = env["CUDA_CACHE_PATH"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return env, mount, volume


@pytest.mark.parametrize("values", ALL_VALUES, ids=IDS)
def test_the_kernel_cache_is_on_its_own_volume_sized_for_the_cache(values):
    """The CUDA cache (TensorFlow's kernels compiled from PTX on Hopper) holds up to
    CUDA_CACHE_MAXSIZE on a volume that outlives the container (not /tmp, not the image), and
    XLA's executables sit on it too."""
    objs = render(values)
    env, mount, volume = cache_mount(objs)
    assert mount["mountPath"] not in ("/tmp", "/dev/shm") and not mount.get("readOnly")
    maxsize = int(env["CUDA_CACHE_MAXSIZE"])
    assert maxsize >= 2**31  # the driver's default, 256 MiB, is far below TensorFlow's kernels
    if "emptyDir" in volume:
        assert quantity(volume["emptyDir"]["sizeLimit"]) >= maxsize
        assert "medium" not in volume["emptyDir"]  # on disk: the cache is not held in RAM
    else:
        assert volume["persistentVolumeClaim"]["claimName"]
    flags = env["TF_XLA_FLAGS"]
    assert flags == f"--tf_xla_persistent_cache_directory={mount['mountPath']}"


def test_a_claim_keeps_the_kernel_cache_across_pods():
    objs = render(("ci/kernel-cache-pvc-values.yaml",))
    _, mount, volume = cache_mount(objs)
    assert volume["persistentVolumeClaim"] == {"claimName": "resnet-kernel-cache"}
    assert mount["subPath"] == "h100"
    # The ephemeral-storage request then counts /tmp, the downloaded weights and the extra,
    # not the cache.
    request = server_container(objs)["resources"]["requests"]["ephemeral-storage"]
    assert quantity(request) == quantity("1Gi") + quantity("2Gi") + quantity("512Mi")
    assert not find(objs, "PersistentVolumeClaim")  # the claim is the user's
