"""charts/locust: lint, render and strict validation for every shipped values file, schema
refusals, what the master and workers are told, how a run ends once and keeps its reports, and
what the web UI exposes. Uses the pinned helm from mk/tools.mk and the offline Kubernetes
schemas of the service chart's tests."""

from __future__ import annotations

import functools
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.chart.chart_helpers import HELM, K8S_VERSIONS, require, validation_errors
from tests.loadtest.test_plan_in_every_process import seen_by_locust

ROOT = Path(__file__).resolve().parents[2]

CHART = ROOT / "charts" / "locust"
CI_VALUES = sorted(f"ci/{p.name}" for p in (CHART / "ci").glob("*.yaml"))
SHIPPED = [(), *[(v,) for v in CI_VALUES]]
SUITE = ("locustfile.py", "options.py", "shapes.py", "checks.py", "images.py")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require(HELM)), *args], capture_output=True, text=True, timeout=120, check=False
    )


def value_args(values: tuple[str, ...], sets: tuple[str, ...]) -> list[str]:
    return [a for v in values for a in ("-f", str(CHART / v))] + [
        a for s in sets for a in ("--set", s)
    ]


@functools.cache
def _render(values: tuple[str, ...], sets: tuple[str, ...]) -> str:
    out = helm("template", "lt", str(CHART), "--namespace", "load", *value_args(values, sets))
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(values: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render(values, sets)) if d]


def component(objs: list[dict], kind: str, name: str) -> dict:
    (found,) = [
        o
        for o in objs
        if o["kind"] == kind and o["metadata"]["labels"].get("app.kubernetes.io/component") == name
    ]
    return found


def job(objs: list[dict], name: str) -> dict:
    return component(objs, "Job", name)


def container(objs: list[dict], name: str) -> dict:
    (c,) = job(objs, name)["spec"]["template"]["spec"]["containers"]
    return c


def notes(values: tuple[str, ...] = ()) -> str:
    out = helm(
        "install", "lt", str(CHART), "--dry-run=client", "-n", "load", *value_args(values, ())
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize("values", SHIPPED, ids=lambda v: v[0] if v else "defaults")
def test_shipped_values_lint_render_and_validate(values):
    lint = helm("lint", "--strict", str(CHART), *value_args(values, ()))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    objs = render(values)
    assert {o["kind"] for o in objs} >= {"Job", "Service"}
    for version in K8S_VERSIONS:
        errors = [e for o in objs for e in validation_errors(o, version)]
        assert not errors, f"Kubernetes {version}:\n" + "\n".join(errors)


def test_configmap_carries_the_suite_and_it_runs_from_a_flat_folder(tmp_path):
    (cm,) = [o for o in render() if o["kind"] == "ConfigMap"]
    assert sorted(cm["data"]) == sorted(SUITE)
    for name in SUITE:
        assert cm["data"][name] == (ROOT / "loadtest" / "suite" / name).read_text().rstrip("\n")
        (tmp_path / name).write_text(cm["data"][name] + "\n")
    # Outside the repository, where `loadtest` is not importable: the locustfile imports its
    # neighbours and Locust lists its user classes.
    out = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(tmp_path / "locustfile.py"), "--list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    for user in ("ClassifyRawUser", "ClassifyMultipartUser", "ClassifyB64User", "V2InferUser"):
        assert user in out.stdout


def test_master_and_workers_agree_on_ports_names_and_options():
    objs = render(sets=("workers.replicas=3", "test.tags={classify-b64,v2}"))
    master, worker = container(objs, "master"), container(objs, "worker")
    service = component(objs, "Service", "master")
    assert "--master" in master["args"] and "--expect-workers=3" in master["args"]
    assert f"--master-host={service['metadata']['name']}" in worker["args"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert f"--master-port={ports['workers']}" in worker["args"]
    assert f"--master-bind-port={ports['workers']}" in master["args"]
    for c in (master, worker):
        i = c["args"].index("--tags")
        assert c["args"][i + 1 : i + 3] == ["classify-b64", "v2"]
        assert "--locustfile=/mnt/locust/locustfile.py" in c["args"]
        assert "--shape=step" in c["args"]
    master_pod = job(objs, "master")["spec"]["template"]["metadata"]
    worker_pod = job(objs, "worker")["spec"]["template"]["metadata"]
    selector = service["spec"]["selector"]
    assert selector.items() <= master_pod["labels"].items()
    assert not selector.items() <= worker_pod["labels"].items()
    workers = job(objs, "worker")["spec"]
    assert workers["completions"] == workers["parallelism"] == 3
    # A master with no web UI (headless) must still be ready for the workers to reach it.
    assert container(objs, "master")["readinessProbe"]["tcpSocket"] == {"port": "workers"}


def test_a_headless_run_runs_once_and_ends():
    """Headless, not --autostart: Locust quits when the shape ends (with --autostart it only
    stops, so --autoquit never comes and the HTML report is never written). The master is a
    Job that is never retried: a finished run is not started again over its own reports."""
    objs = render(("ci/headless-step-values.yaml",))
    master, workers = job(objs, "master")["spec"], job(objs, "worker")["spec"]
    args = container(objs, "master")["args"]
    assert "--headless" in args and "--autostart" not in args
    assert not any(a.startswith("--autoquit") for a in args)
    assert "--expect-workers=8" in args and "--expect-workers-max-wait=300" in args
    assert master["backoffLimit"] == 0 and master["template"]["spec"]["restartPolicy"] == "Never"
    # Workers quit when the master does, with status 0 whatever their requests did (the
    # master's status reports them), so their Job completes instead of restarting them.
    assert workers["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert "--exit-code-on-error=0" in container(objs, "worker")["args"]
    assert "--headless" not in container(render(), "master")["args"]
    assert not [o for o in render() if o["kind"] == "Deployment"]


def as_locust_command(args: list[str]) -> list[str]:
    """A pod's Locust args as a command line of this checkout (for `seen_by_locust`)."""
    locustfile = str(ROOT / "loadtest" / "suite" / "locustfile.py")
    return ["-f", locustfile] + [
        a.replace("$(REPORTS)", "/tmp") for a in args if not a.startswith("--locustfile=")
    ]


@pytest.mark.parametrize(
    ("values", "sets"),
    [
        (("ci/spike-existing-configmap-values.yaml",), ()),
        ((), ("test.shape=soak", "test.runTime=1h", "test.users=30", "test.arrivalRate=60")),
        (("ci/open-loop-pvc-values.yaml",), ()),
    ],
    ids=["spike", "soak", "open-loop-constant"],
)
def test_workers_plan_the_masters_load(values, sets):
    """Workers get no --run-time, --users or --spawn-rate: they plan the same stages as the
    master, and an open-loop user sends its share of test.arrivalRate, not all of it."""
    objs = render(values, sets)
    master = seen_by_locust(as_locust_command(container(objs, "master")["args"]))
    worker = seen_by_locust(as_locust_command(container(objs, "worker")["args"]), as_worker=True)
    assert isinstance(master, dict) and master["plan"], master
    assert worker == master


def test_spike_and_soak_need_a_run_time():
    for shape in ("spike", "soak"):
        out = helm("template", "lt", str(CHART), "--set", f"test.shape={shape}")
        assert out.returncode != 0 and f"{shape} needs test.runTime" in out.stderr


def test_a_headless_constant_run_needs_a_run_time():
    out = helm(
        "template", "lt", str(CHART), "--set", "test.autostart=true", "--set", "test.shape=constant"
    )
    assert out.returncode != 0 and "needs test.runTime" in out.stderr


def test_reports_go_to_a_folder_of_the_run_on_a_kept_claim():
    objs = render(("ci/headless-step-values.yaml",))
    c = container(objs, "master")
    env = {e["name"]: e for e in c["env"]}
    assert env["REPORTS"]["value"] == "/reports/$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert {
        "--csv=$(REPORTS)/locust",
        "--csv-full-history",
        "--html=$(REPORTS)/locust.html",
    } <= set(c["args"])
    assert "--step-time=2m" in c["args"] and "--steps=8" in c["args"]
    (claim,) = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = job(objs, "master")["spec"]["template"]["spec"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == "reports"]
    assert vol["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # Without a claim: an emptyDir, read while the pod stays up after the run.
    plain = render()
    (vol,) = [
        v
        for v in job(plain, "master")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "reports"
    ]
    assert "emptyDir" in vol
    assert {e["name"]: e.get("value") for e in container(plain, "master")["env"]}[
        "REPORTS"
    ] == "/reports"


def wrapper(objs: list[dict], **env_overrides: str) -> tuple[list[str], dict[str, str]]:
    """The master container's command and args as the kubelet runs them ($(VAR) expanded),
    with some of its environment replaced (paths on this machine)."""
    c = container(objs, "master")
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e} | env_overrides
    expand = lambda s: re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), s)  # noqa: E731
    return [expand(a) for a in c["command"] + c["args"]], env


def fake_locust(tmp_path: Path, status: int) -> dict[str, str]:
    """A `locust` on PATH that writes what --csv and --html name and exits with `status`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "locust"
    script.write_text(
        '#!/bin/sh\nfor a in "$@"; do case $a in\n'
        '  --csv=*) : > "${a#--csv=}_stats.csv";;\n'
        '  --html=*) : > "${a#--html=}";;\n'
        f"esac; done\nexit {status}\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_the_master_keeps_its_pod_up_after_the_run_and_exits_with_locusts_status(tmp_path):
    reports = tmp_path / "reports"
    objs = render(sets=("test.autostart=true", "test.runTime=1m", "reports.keepAliveSeconds=1"))
    command, env = wrapper(objs, REPORTS=str(reports))
    assert command[:2] == ["/bin/sh", "-c"] and env["KEEP_ALIVE_S"] == "1"
    start = time.monotonic()
    out = subprocess.run(
        command, env=env | fake_locust(tmp_path, 3), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 3, out.stderr
    assert time.monotonic() - start >= 1  # kept up for keepAliveSeconds
    assert (reports / "locust_stats.csv").exists() and (reports / "locust.html").exists()
    assert "status 3" in out.stdout


def test_sigterm_during_the_keep_alive_ends_the_pod_at_once(tmp_path):
    command, env = wrapper(render(), REPORTS=str(tmp_path / "r"), KEEP_ALIVE_S="600")
    proc = subprocess.Popen(
        command, env=env | fake_locust(tmp_path, 0), stdout=subprocess.PIPE, text=True
    )
    assert "status 0" in proc.stdout.readline()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_sigterm_during_the_run_reaches_locust(tmp_path):
    """On `helm uninstall` (SIGTERM to the shell, PID 1) Locust itself must get the signal:
    it then writes its stats and exits, and the pod ends with its status."""
    env = fake_locust(tmp_path, 0)
    locust = Path(env["PATH"].split(":")[0]) / "locust"
    locust.write_text("#!/bin/sh\ntrap 'exit 7' TERM\necho started\nsleep 10 &\nwait $!\n")
    command, env = wrapper(render(), REPORTS=str(tmp_path / "r"), KEEP_ALIVE_S="0")
    proc = subprocess.Popen(
        command,
        env=env | {"PATH": f"{locust.parent}:/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 7


def test_a_helm_upgrade_with_other_values_makes_a_new_run():
    """A Job's pod template cannot change: other values make Jobs of other names."""
    names = lambda objs: {o["metadata"]["name"] for o in objs if o["kind"] == "Job"}  # noqa: E731
    assert names(render()) == names(render())
    assert names(render()).isdisjoint(names(render(sets=("test.users=20",))))
    service = component(render(sets=("test.users=20",)), "Service", "master")
    assert service["metadata"]["name"] == "lt-locust-master"


def test_env_and_secrets_reach_master_and_workers():
    objs = render(("ci/headless-step-values.yaml",), ("envFrom[0].secretRef.name=lt-extra",))
    for name in ("master", "worker"):
        c = container(objs, name)
        (token,) = [e for e in c["env"] if e["name"] == "LOADTEST_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "serve-token", "key": "token"}
        assert c["envFrom"] == [{"secretRef": {"name": "lt-extra"}}]


def test_the_worker_port_and_the_ui_stay_inside_the_cluster_by_default():
    services = [o for o in render() if o["kind"] == "Service"]
    assert [s["spec"]["type"] for s in services] == ["ClusterIP"]


def test_a_load_balancer_exposes_only_the_web_ui_from_the_given_ranges():
    objs = render(("ci/spike-existing-configmap-values.yaml",))
    services = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Service"}
    assert services["lt-locust-master"]["type"] == "ClusterIP"
    web = services["lt-locust-web"]
    assert web["type"] == "LoadBalancer" and web["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert [p["name"] for p in web["ports"]] == ["web"]


def test_notes_say_how_to_fetch_the_reports_and_the_reader_pod_is_valid():
    text = notes(("ci/headless-step-values.yaml",))
    (job_name,) = re.findall(r"logs -f job/(\S+)", text)
    assert job_name == job(render(("ci/headless-step-values.yaml",)), "master")["metadata"]["name"]
    assert f"batch.kubernetes.io/job-name={job_name}" in text
    assert 'cp "$pod:/reports/$pod" reports/in-cluster' in text
    # The HPA target counts images: the report needs the run's images per request.
    assert "python -m loadtest report reports/in-cluster" in text
    assert "--images-per-request 4" in text
    overrides = json.loads(re.search(r"--overrides='(.*)'", text).group(1))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "locust-reports"}} | overrides
    for version in K8S_VERSIONS:
        assert not validation_errors(pod, version)
    (vol,) = pod["spec"]["volumes"]
    assert vol["persistentVolumeClaim"]["claimName"] == "lt-locust-reports"
    assert 'cp "$pod:/reports" reports/in-cluster' in notes()


def test_images_from_a_claim_are_mounted_read_only():
    objs = render(("ci/open-loop-pvc-values.yaml",))
    for name in ("master", "worker"):
        c = container(objs, name)
        assert "--images-dir=/images" in c["args"] and "--arrival-rate=200" in c["args"]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/images"]
        assert mount["readOnly"] and mount["subPath"] == "mixed"
        pod = job(objs, name)["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "images"]
        assert vol["persistentVolumeClaim"] == {"claimName": "loadtest-images", "readOnly": True}
        assert pod["tolerations"][0]["value"] == "load"


def test_existing_configmap_replaces_the_chart_copy():
    objs = render(("ci/spike-existing-configmap-values.yaml",))
    assert not [o for o in objs if o["kind"] == "ConfigMap"]
    for name in ("master", "worker"):
        pod = job(objs, name)["spec"]["template"]["spec"]
        (vol,) = [v for v in pod["volumes"] if v["name"] == "locustfile"]
        assert vol["configMap"]["name"] == "my-locustfile"


def test_every_container_is_locked_down():
    for o in render(("ci/open-loop-pvc-values.yaml",)):
        if o["kind"] != "Job":
            continue
        pod = o["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert c["resources"]["requests"]["cpu"]
            assert c["resources"]["requests"]["ephemeral-storage"]
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


@pytest.mark.parametrize(
    "sets",
    [
        ("unknown=1",),
        ("test.shape=wave",),
        ("test.tags={classify-raw,nonsense}",),
        ("test.stepTime=soon",),
        ("images.source=pvc",),  # no claim
        ("targetHost=serve.example.org",),  # no scheme
        ("workers.replicas=0",),
        ("master.serviceType=Ingress",),
        ("master.serviceType=LoadBalancer",),  # the UI has no login: source ranges required
        ("master.loadBalancerSourceRanges={everyone}",),
        ("test.autoquit=600",),  # the master is a Job now: it runs once
    ],
)
def test_schema_refuses_bad_values(sets):
    out = helm("template", "lt", str(CHART), *value_args((), sets))
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
