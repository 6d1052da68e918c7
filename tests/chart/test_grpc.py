"""The gRPC listener in the chart: its container and Service ports, SERVE_GRPC_PORT, the native
gRPC probes, the gRPC Ingress, the network policy, and the NOTES that tell how to reach it."""

from __future__ import annotations

import pytest

from tests.chart.chart_helpers import (
    CHART,
    env_of,
    find,
    helm,
    one,
    render,
    server_container,
)
from tests.chart.test_properties import notes_of

GRPC_CI = ("ci/grpc-probes-ingress-values.yaml",)


def service_ports(objs: list[dict]) -> dict[str, dict]:
    return {p["name"]: p for p in one(objs, "Service")["spec"]["ports"]}


def ingress(objs: list[dict], name: str) -> dict:
    (found,) = [o for o in find(objs, "Ingress") if o["metadata"]["name"] == name]
    return found


def backends(ing: dict) -> list[dict]:
    return [
        path["backend"]["service"]
        for rule in ing["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]


def template_error(*sets: str) -> str:
    args = [a for s in sets for a in ("--set", s)]
    out = helm("template", "rel", str(CHART), *args, check=False)
    assert out.returncode != 0, f"rendered with {sets}"
    return out.stderr


def test_service_has_a_grpc_port_with_the_h2c_app_protocol():
    ports = service_ports(render())
    assert ports["grpc"] == {
        "name": "grpc",
        "port": 8001,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "kubernetes.io/h2c",
    }
    # /metrics stays on the HTTP listener.
    assert ports["metrics"]["targetPort"] == ports["http"]["targetPort"] == "http"
    custom = service_ports(render(sets=("grpc.servicePort=9001", "grpc.appProtocol=grpc")))
    assert (custom["grpc"]["port"], custom["grpc"]["appProtocol"]) == (9001, "grpc")


def test_container_listens_for_grpc_on_the_port_it_is_told():
    container = server_container(render())
    assert {"name": "grpc", "containerPort": 8001, "protocol": "TCP"} in container["ports"]
    assert env_of(container)["SERVE_GRPC_PORT"] == "8001"
    moved = server_container(render(sets=("grpc.containerPort=9001",)))
    assert {"name": "grpc", "containerPort": 9001, "protocol": "TCP"} in moved["ports"]
    assert env_of(moved)["SERVE_GRPC_PORT"] == "9001"


def test_grpc_disabled_renders_no_grpc_port_and_turns_the_listener_off():
    objs = render(sets=("grpc.enabled=false", "networkPolicy.enabled=true"))
    container = server_container(objs)
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert env_of(container)["SERVE_GRPC_PORT"] == "0"
    assert "grpc" not in service_ports(objs)
    policy = one(objs, "NetworkPolicy", "server")
    assert all(p["port"] != "grpc" for rule in policy["spec"]["ingress"] for p in rule["ports"])
    assert "grpc" not in str(container["startupProbe"]) + str(container["livenessProbe"])


def test_grpc_probes_ask_the_health_service_on_the_grpc_port():
    container = server_container(render(GRPC_CI))
    startup, ready, live = (
        container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")
    )
    # Readiness semantics (like /readyz) under service "", liveness (like /healthz) under
    # "liveness"; a grpc probe takes a port number, not a name.
    assert startup["grpc"] == ready["grpc"] == {"port": 8001, "service": ""}
    assert live["grpc"] == {"port": 8001, "service": "liveness"}
    assert not any("httpGet" in p for p in (startup, ready, live))
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    moved = server_container(render(GRPC_CI, ("grpc.containerPort=9001",)))
    assert moved["readinessProbe"]["grpc"]["port"] == 9001


def test_grpc_probes_are_off_by_default():
    container = server_container(render())
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_grpc_probes_without_grpc_fail_to_render():
    err = template_error("grpc.enabled=false", "probes.grpc=true")
    assert "probes.grpc=true needs grpc.enabled=true" in err


def test_grpc_ingress_routes_to_the_services_grpc_port_with_tls():
    objs = render(GRPC_CI)
    grpc = ingress(objs, "rel-resnet-serve-grpc")
    assert backends(grpc) == [{"name": "rel-resnet-serve", "port": {"name": "grpc"}}]
    assert grpc["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/backend-protocol": "GRPC"
    }
    assert grpc["spec"]["ingressClassName"] == "nginx"
    assert grpc["spec"]["tls"] == [
        {"hosts": ["grpc.resnet.example.org"], "secretName": "resnet-grpc-tls"}
    ]
    assert grpc["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    # The HTTP Ingress is unchanged next to it.
    http = ingress(objs, "rel-resnet-serve")
    assert backends(http) == [{"name": "rel-resnet-serve", "port": {"name": "http"}}]
    assert "grpc" in service_ports(objs)


def test_grpc_ingress_is_off_by_default_and_needs_grpc():
    assert [o["metadata"]["name"] for o in find(render(), "Ingress")] == []
    err = template_error("grpc.enabled=false", "grpc.ingress.enabled=true")
    assert "grpc.ingress.enabled=true needs grpc.enabled=true" in err


def test_network_policy_admits_the_grpc_port_to_the_clients_only():
    policy = one(render(GRPC_CI), "NetworkPolicy", "server")
    clients, scrapers = policy["spec"]["ingress"]
    assert {"port": "grpc", "protocol": "TCP"} in clients["ports"]
    assert {"port": "http", "protocol": "TCP"} in clients["ports"]
    assert {"kubernetes.io/metadata.name": "ingress-nginx"} in [
        peer.get("namespaceSelector", {}).get("matchLabels") for peer in clients["from"]
    ]
    assert scrapers["ports"] == [{"port": "http", "protocol": "TCP"}]


@pytest.mark.parametrize(
    "sets, message",
    [
        (("grpc.servicePort=80",), "grpc.servicePort must differ"),
        (("grpc.servicePort=9090",), "grpc.servicePort must differ"),
        (("grpc.containerPort=8000",), "grpc.containerPort must differ from containerPort"),
    ],
    ids=["service-port", "metrics-port", "container-port"],
)
def test_colliding_ports_fail_to_render(sets, message):
    assert message in template_error(*sets)


def test_colliding_ports_do_not_matter_with_grpc_off():
    assert render(sets=("grpc.enabled=false", "grpc.servicePort=80", "grpc.containerPort=8000"))


def test_notes_print_how_to_reach_grpc():
    lines = [line.strip() for line in notes_of().splitlines()]
    assert "kubectl --namespace ml port-forward service/demo-resnet-serve 8001:8001" in lines
    assert "grpcurl -plaintext localhost:8001 list" in lines
    assert (
        """grpcurl -plaintext -d '{"service": ""}' localhost:8001 grpc.health.v1.Health/Check"""
        in lines
    )
    assert "grpc_health_probe -addr=localhost:8001" in lines
    assert "gRPC through the Ingress: grpcurl grpc.resnet.example.org:443 list" in [
        line.strip() for line in notes_of(GRPC_CI).splitlines()
    ]


def test_notes_say_nothing_of_grpc_when_it_is_off(tmp_path):
    values = tmp_path / "off.yaml"
    values.write_text("grpc:\n  enabled: false\n")
    out = helm("install", "demo", str(CHART), "--dry-run=client", "-n", "ml", "-f", str(values))
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "grpcurl" not in notes and "8001" not in notes


def test_grpc_limits_become_the_services_settings():
    env = env_of(server_container(render()))
    assert env["SERVE_GRPC_MAX_MESSAGE_BYTES"] == "8388608"
    assert env["SERVE_GRPC_MAX_CONCURRENT_STREAMS"] == "32"
    assert env["SERVE_GRPC_MAX_METADATA_BYTES"] == "16384"
    assert env["SERVE_GRPC_MESSAGE_TIMEOUT_S"] == "10"
    assert env["SERVE_GRPC_KEEPALIVE_S"] == "60"
    sets = ("grpc.limits.maxConcurrentStreams=8", "grpc.limits.messageTimeoutSeconds=3")
    env = env_of(server_container(render(sets=sets)))
    assert (env["SERVE_GRPC_MAX_CONCURRENT_STREAMS"], env["SERVE_GRPC_MESSAGE_TIMEOUT_S"]) == (
        "8",
        "3",
    )
    # Each value is one the service accepts (its Settings validate the same bounds).
    from service.settings import Settings

    Settings(**{k.removeprefix("SERVE_").lower(): v for k, v in env.items() if "_GRPC_" in k})
    assert "maxConcurrentStreams" in template_error("grpc.limits.maxConcurrentStreams=0")


def test_grpc_server_is_chosen_by_a_value():
    assert env_of(server_container(render()))["SERVE_GRPC_SERVER"] == "native"
    env = env_of(server_container(render(sets=("grpc.server=grpcio",))))
    assert env["SERVE_GRPC_SERVER"] == "grpcio"
    assert "server" in template_error("grpc.server=h2")
    # Set from the value only: naming it in `settings` fails the render.
    assert "grpc.server" in template_error("settings.SERVE_GRPC_SERVER=native")
