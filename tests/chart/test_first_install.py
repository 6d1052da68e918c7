"""What a first install on AKS, GKE and EKS would hit (issue 21's list), fixed in the chart:
each rendered by the real helm and checked on the objects a cluster would receive.
docs/DEPLOY.md ("A first install") has the items decided there instead."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.chart.chart_helpers import (
    CHART,
    GPU_PLATFORM_VALUES,
    PLATFORM_VALUES,
    env_of,
    helm,
    one,
    render,
    server_container,
)
from tests.chart.test_chart_scripts import GOOD, fake_service, serve

HELM_TEST = CHART / "files" / "helm_test.py"


def fails(*sets: str) -> str:
    args = [a for s in sets for a in ("--set", s)]
    out = helm("template", "rel", str(CHART), *args, check=False)
    assert out.returncode != 0, f"{sets} rendered"
    return out.stderr


def pod_spec(objs: list[dict]) -> dict:
    return one(objs, "Deployment")["spec"]["template"]["spec"]


# 1. progressDeadlineSeconds


@pytest.mark.parametrize("values", [(), ("ci/kernel-cache-pvc-values.yaml",)])
def test_progress_deadline_outlasts_the_startup_budget_and_notes_wait_longer(values):
    objs = render(values)
    deployment = one(objs, "Deployment")
    probe = server_container(objs)["startupProbe"]
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    deadline = deployment["spec"]["progressDeadlineSeconds"]
    assert deadline == budget + 1200  # node provisioning and the image pull
    files = [a for v in values for a in ("-f", str(CHART / v))]
    text = helm("install", "rel", str(CHART), "--dry-run=client", *files).stdout
    timeout = int(re.search(r"rollout status \S+ --timeout=(\d+)s", text).group(1))
    assert timeout > deadline


def test_a_progress_deadline_inside_the_startup_budget_is_refused():
    err = fails("progressDeadlineSeconds=300")
    assert "progressDeadlineSeconds=300 must exceed the startup budget, 600 s" in err
    assert (
        one(render(sets=("progressDeadlineSeconds=4000",)), "Deployment")["spec"][
            "progressDeadlineSeconds"
        ]
        == 4000
    )


# 2. helm test with authentication


TOKENS, FULL = "SERVE_AUTH_TOKENS", "rel-resnet-serve"


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (("secretSettings.SERVE_AUTH_TOKENS=a\\,b",), (TOKENS, "secretKeyRef", FULL)),
        (("settings.SERVE_AUTH_TOKENS=a",), (TOKENS, "configMapKeyRef", FULL)),
        (("existingSecret=serve-env",), (TOKENS, "secretKeyRef", "serve-env")),
        (("tests.tokenSecret.name=tok", "tests.tokenSecret.key=t"),
         ("SERVE_TEST_TOKEN", "secretKeyRef", "tok")),
    ],
)  # fmt: skip
def test_the_helm_test_pod_gets_the_token_where_the_server_gets_it(sets, expected):
    pod = next(o for o in render(sets=sets) if o["kind"] == "Pod")
    (env,) = pod["spec"]["containers"][0]["env"]
    name, ref, source = expected
    assert env["name"] == name and env["valueFrom"][ref]["name"] == source


def test_the_helm_test_pod_has_no_token_without_authentication():
    pod = next(o for o in render() if o["kind"] == "Pod")
    assert not pod["spec"]["containers"][0].get("env")


def authenticated_service(token: str):
    handler, calls = fake_service(ready_after=0, predictions=GOOD)

    class Authenticated(handler):
        def do_GET(self):  # noqa: N802
            if self.path != "/readyz" and self.headers.get("Authorization") != f"Bearer {token}":
                return self.reply(401, {"error": "missing or invalid token"})
            return super().do_GET()

        def do_POST(self):  # noqa: N802
            if self.headers.get("Authorization") != f"Bearer {token}":
                self.rfile.read(int(self.headers["Content-Length"]))
                return self.reply(401, {"error": "missing or invalid token"})
            return super().do_POST()

    return Authenticated


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({}, False),
        ({"SERVE_AUTH_TOKENS": " t1 ,t2"}, True),
        ({"SERVE_TEST_TOKEN": "t1"}, True),
        ({"SERVE_AUTH_TOKENS": "wrong"}, False),
    ],
)
def test_helm_test_sends_the_token(env, ok):
    with serve(authenticated_service("t1")) as base:
        out = subprocess.run(
            [sys.executable, str(HELM_TEST), "--url", base, "--ready-timeout", "10"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin", **env},
        )  # fmt: skip
    assert (out.returncode == 0) == ok, out.stdout + out.stderr
    if not ok:
        assert "401" in out.stdout + out.stderr


# 3. EKS: the amd64 image on amd64 nodes


@pytest.mark.parametrize("values", PLATFORM_VALUES)
def test_every_platform_pins_the_images_architecture(values):
    assert pod_spec(render((values,)))["nodeSelector"]["kubernetes.io/arch"] == "amd64"


def test_the_architecture_pin_can_be_dropped():
    assert "nodeSelector" not in pod_spec(render(sets=("nodeSelector.kubernetes\\.io/arch=null",)))


# 6. A GPU pod without a usable GPU refuses to start


@pytest.mark.parametrize("values", GPU_PLATFORM_VALUES)
def test_gpu_values_make_the_gpu_mandatory(values):
    assert env_of(server_container(render((values,))))["SERVE_REQUIRE_GPU"] == "true"


def test_cpu_values_do_not_require_a_gpu_and_settings_win():
    assert env_of(server_container(render(("values-cpu.yaml",))))["SERVE_REQUIRE_GPU"] == "false"
    objs = render(sets=("settings.SERVE_REQUIRE_GPU=false",))
    assert "SERVE_REQUIRE_GPU" not in env_of(server_container(objs))
    config = one(objs, "ConfigMap")["data"]
    assert config["SERVE_REQUIRE_GPU"] == "false"


# 7. NetworkPolicy egress for a weights download and an external Redis


def egress_ports(objs: list[dict]) -> set[int]:
    policy = next(
        o for o in objs if o["kind"] == "NetworkPolicy" and "redis" not in o["metadata"]["name"]
    )
    return {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}


def test_network_policy_lets_the_weights_download_and_external_redis_out():
    base = ("networkPolicy.enabled=true",)
    assert egress_ports(render(sets=base)) == {53}
    url = (*base, "weights.source=url", "weights.url.href=https://example.org/w.h5")
    assert egress_ports(render(sets=url)) == {53, 443, 80}
    redis = (*base, "redis.mode=external", "redis.external.existingSecret=redis")
    assert egress_ports(render(sets=redis)) == {53, 6379}


# 8. Other environment variables and volumes


def test_extra_env_and_volumes_reach_the_server_and_the_weights_download():
    sets = (
        "weights.source=url", "weights.url.href=https://example.org/w.h5",
        "extraEnv[0].name=HTTPS_PROXY", "extraEnv[0].value=http://proxy:3128",
        "extraEnv[1].name=SSL_CERT_FILE", "extraEnv[1].value=/etc/corp-ca/ca.pem",
        "extraVolumes[0].name=corp-ca", "extraVolumes[0].configMap.name=corp-ca",
        "extraVolumeMounts[0].name=corp-ca", "extraVolumeMounts[0].mountPath=/etc/corp-ca",
        "extraVolumeMounts[0].readOnly=true",
    )  # fmt: skip
    spec = pod_spec(render(sets=sets))
    for container in (*spec["containers"], *spec["initContainers"]):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HTTPS_PROXY"] == "http://proxy:3128", container["name"]
        assert env["SSL_CERT_FILE"] == "/etc/corp-ca/ca.pem"
        assert {"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True} in container[
            "volumeMounts"
        ]
    assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in spec["volumes"]


def test_a_non_serve_setting_points_at_extra_env():
    err = fails("settings.HTTPS_PROXY=http://proxy:3128")
    assert "settings.HTTPS_PROXY: settings holds the service's SERVE_* settings" in err
    assert "extraEnv" in err
    assert "secretSettings.NO_PROXY" in fails("secretSettings.NO_PROXY=x")


@pytest.mark.parametrize(
    "setting, value",
    [
        ("settings.SERVE_GRACEFUL_TIMEOUT_S=100", "terminationGracePeriodSeconds"),
        ("secretSettings.SERVE_MODEL=resnet101", "model.arch"),
        ("settings.SERVE_GRPC_KEEPALIVE_S=5", "grpc.limits.keepaliveSeconds"),
        ("settings.SERVE_PORT=9000", "containerPort"),
    ],
)
def test_a_setting_the_chart_sets_itself_points_at_its_value(setting, value):
    """The container's env wins over envFrom: the same name in settings would be ignored."""
    err = fails(setting)
    name = setting.split("=")[0]
    assert f"{name}: the chart sets {name.split('.')[1]} from {value}" in err


def test_extra_volume_mounts_need_a_name_and_an_absolute_path():
    err = fails("extraVolumeMounts[0].name=x", "extraVolumeMounts[0].mountPath=relative")
    assert "/extraVolumeMounts/0/mountPath" in err


# 10. The PodDisruptionBudget of a single pod


@pytest.mark.parametrize(
    ("sets", "spec"),
    [
        (("replicaCount=1",), {"minAvailable": 1}),
        (("replicaCount=2",), {"maxUnavailable": 1}),
        (("autoscaling.enabled=true", "autoscaling.minReplicas=1"), {"minAvailable": 1}),
        (("autoscaling.enabled=true", "autoscaling.minReplicas=3", "replicaCount=1"),
         {"maxUnavailable": 1}),
    ],
)  # fmt: skip
def test_a_drain_never_evicts_the_only_pod(sets, spec):
    pdb = one(render(sets=sets), "PodDisruptionBudget")["spec"]
    assert {k: v for k, v in pdb.items() if k != "selector"} == spec


# 11. More than one GPU per pod


def test_more_than_one_gpu_per_pod_is_refused_by_the_schema():
    err = fails("gpu.count=2")
    assert "/gpu/count" in err and "maximum" in err
    assert "more would be billed and idle" in (CHART / "values.schema.json").read_text()
