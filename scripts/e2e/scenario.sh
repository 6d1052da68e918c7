# Sourced by scripts/e2e/run.sh once the cluster is up: what a user does with the chart, and
# what must hold after each step.

kube() { kubectl --namespace "$NS" "$@"; }

# A background process of this scenario (port-forward, steady client), stopped by teardown.
bg() { local name=$1; shift; start "$name" "$@"; }

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

SERVE_SETS=(
  --set image.repository="$SERVE_IMAGE" --set image.tag="$SERVE_TAG" --set image.pullPolicy=Never
  # One pod of 500m CPU (SERVE_CPUS rounds it up to 1) fits the 2-core node twice: a rollout
  # surges a second pod.
  --set replicaCount=1 --set resources.requests.cpu=500m
  --set weights.source=pvc --set weights.pvc.claimName=weights --set weights.file="$WEIGHTS_FILE"
  # The helm test pod runs the server's image (python:3.12-alpine cannot be pulled here).
  --set tests.image.repository=
)

weights_volume() {
  kubectl apply -f - <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: resnet-e2e-weights}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $WEIGHTS_DIR, type: Directory}
  claimRef: {namespace: $NS, name: weights}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: weights, namespace: $NS}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: resnet-e2e-weights
  resources: {requests: {storage: 1Gi}}
EOF
}

server_pod() {
  kube get pods -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=server" \
    --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}'
}

install_and_test() {
  step "helm install --wait (values-cpu.yaml; weights from a PersistentVolume)"
  kubectl create namespace "$NS"
  weights_volume
  helm install "$RELEASE" charts/resnet-serve --namespace "$NS" \
    -f charts/resnet-serve/values-cpu.yaml "${SERVE_SETS[@]}" --wait --timeout 10m
  # The command NOTES prints, as printed.
  local rollout
  rollout=$(helm get notes "$RELEASE" -n "$NS" | grep -o 'kubectl --namespace .* rollout status .*')
  [ -n "$rollout" ] || fail "NOTES print no rollout status command"
  eval "$rollout"

  step "the pod: probes, security context, volumes, SERVE_CPUS, the supervisor's processes"
  local pod
  pod=$(server_pod)
  kube get pod "$pod" -o wide
  kube exec -i "$pod" -c server -- python3 - <<'EOF'
import os, pathlib
assert os.getuid() == 10001 and os.getgid() == 10001, (os.getuid(), os.getgid())
try:
    open("/opt/e2e-write-test", "w")
    raise SystemExit("FAIL: the root filesystem is writable")
except OSError:
    pass
mounts = {line.split()[1]: line.split()[2] for line in open("/proc/mounts")}
assert mounts.get("/dev/shm") == "tmpfs", mounts.get("/dev/shm")
for path in ("/tmp", "/var/cache/resnet-serve", "/var/lib/resnet-serve/weights"):
    assert path in mounts, f"{path} is not a volume"
open("/tmp/e2e-write-test", "w").write("ok")
assert os.environ["SERVE_CPUS"] == "1", os.environ.get("SERVE_CPUS")
cmdlines = []
for p in pathlib.Path("/proc").iterdir():
    if p.name.isdigit():
        try:
            cmdlines.append(p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            pass
python = [c for c in cmdlines if "python" in c or "resnet-serve" in c]
print("processes:", *python, sep="\n  ")
assert sum("service.engine.process" in c for c in python) == 1, "one accelerator process"
assert sum("service.server.frontend" in c for c in python) >= 1, "front-end processes"
assert any(c.endswith("bin/resnet-serve") for c in python), "the supervisor"
print("PASS: uid 10001, read-only root, /dev/shm tmpfs, volumes, SERVE_CPUS=1")
EOF

  step "helm test (the timeout NOTES print)"
  local timeout
  timeout=$(helm get notes "$RELEASE" -n "$NS" | sed -n 's/.*helm test .*--timeout \([0-9]*s\).*/\1/p')
  [ -n "$timeout" ] || fail "NOTES print no helm test timeout"
  helm test "$RELEASE" --namespace "$NS" --logs --timeout "$timeout"

  step "port-forward: classify over HTTP and gRPC; kubectl logs"
  local http grpc
  http=$(free_port) grpc=$(free_port)
  bg port-forward kubectl --namespace "$NS" port-forward "service/$FULLNAME" "$http:80" "$grpc:8001"
  wait_for "port-forward" 30 curl -fs "http://127.0.0.1:$http/readyz"
  "$PYTHON" scripts/e2e/checks.py classify --url "http://127.0.0.1:$http" --expected "$STATE/expected.json"
  "$PYTHON" scripts/e2e/checks.py grpc --target "127.0.0.1:$grpc" --expected "$STATE/expected.json"
  curl -fs "http://127.0.0.1:$http/metrics" | grep -q '^serve_images_in_flight' \
    || fail "/metrics through the Service has no serve_images_in_flight"
  pkill_own port-forward
  kube logs "deployment/$FULLNAME" -c server >"$LOGS/server.log"
  grep -q '"levelname"\|"level"' "$LOGS/server.log" || fail "kubectl logs: no JSON log lines"
  grep -q 'gRPC (native)' "$LOGS/server.log" || fail "the server's log says no native gRPC server"
  grep -c . "$LOGS/server.log" | xargs echo "kubectl logs: lines:"
}

LOCUST_USERS=2
locust_job() {
  step "the Locust chart's Job against the Service (in-cluster, through DNS and kube-proxy)"
  helm install lt charts/locust --namespace "$NS" \
    --set targetHost="http://$FULLNAME.$NS.svc" \
    --set image.repository="${LOCUST_IMAGE%:*}" --set image.tag="${LOCUST_IMAGE##*:}" \
    --set image.pullPolicy=Never \
    --set test.autostart=true --set test.shape=constant --set test.users="$LOCUST_USERS" \
    --set test.runTime=30s \
    --set workers.replicas=1 --set workers.resources.requests.cpu=100m \
    --set master.resources.requests.cpu=100m --set reports.keepAliveSeconds=300
  local master pod
  master=$(kube get job -l app.kubernetes.io/instance=lt,app.kubernetes.io/component=master \
    -o jsonpath='{.items[0].metadata.name}')
  WAIT_LOG= wait_for "the Locust master's run" 240 \
    sh -c "kubectl -n $NS logs job/$master | grep -q 'locust exited with status'"
  kube logs "job/$master" >"$LOGS/locust-master.log"
  grep -q 'locust exited with status 0' "$LOGS/locust-master.log" \
    || { tail -30 "$LOGS/locust-master.log" >&2; fail "Locust reported failures"; }
  pod=$(kube get pods -l "job-name=$master" -o jsonpath='{.items[0].metadata.name}')
  rm -rf "$REPORTS/locust" && mkdir -p "$REPORTS"
  kube cp "$pod:/reports" "$REPORTS/locust" >/dev/null
  test -s "$REPORTS/locust/locust.html" || fail "no locust.html in the master's reports"
  local requests
  requests=$(awk -F, '$2 == "Aggregated" {print $3}' "$REPORTS/locust/locust_stats.csv")
  [ "${requests:-0}" -gt 0 ] || fail "Locust sent no request"
  echo "PASS: Locust: $requests requests, report in $REPORTS/locust"
  helm uninstall lt --namespace "$NS" --wait
}

# Monitoring: the chart's two scrape configurations (tests/monitoring/scrape_configs.py) find
# the release through the real API server, with a ServiceAccount's token as a Prometheus in the
# cluster would. Debian's Prometheus has no Kubernetes discovery, so Debian's vmagent scrapes
# (its scraper implements Prometheus's kubernetes_sd_configs and relabeling) and writes to
# Debian's Prometheus, where the queries run (scripts/e2e/prometheus.py).
MONITORING_NS=resnet-e2e-monitoring
MONITORING_OBJECTS=$STATE/monitoring-objects.yaml

monitoring_discovered() { # pod [replaced pod]
  "$PYTHON" scripts/e2e/prometheus.py discovered --agent "$AGENT_URL" --url "$PROM_URL" \
    --rendered "$MONITORING_OBJECTS" --namespace "$NS" --release "$RELEASE" \
    --pod "$1" --ip "$(kube get pod "$1" -o jsonpath='{.status.podIP}')" --gone "${2:-}"
}

# The Secret with the ServiceAccount's token (the token controller makes it); fails until then.
monitoring_token_secret() {
  local name
  name=$(kubectl -n "$MONITORING_NS" get serviceaccount prometheus -o jsonpath='{.secrets[0].name}')
  [ -n "$name" ] && echo "$name"
}

monitoring_start() {
  step "monitoring: the chart's scrape configurations find the pod through the API server"
  kubectl create namespace "$MONITORING_NS"
  kubectl apply -f - <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus, namespace: $MONITORING_NS}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: resnet-e2e-prometheus}
rules:
  - apiGroups: [""]
    resources: [pods, services, endpoints]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: resnet-e2e-prometheus}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: resnet-e2e-prometheus}
subjects: [{kind: ServiceAccount, name: prometheus, namespace: $MONITORING_NS}]
EOF
  wait_for "the ServiceAccount's token" 30 monitoring_token_secret
  kubectl -n "$MONITORING_NS" get secret "$(monitoring_token_secret)" \
    -o jsonpath='{.data.token}' | base64 -d >"$STATE/prometheus.token"
  # The release's objects as installed, with the ServiceMonitor (scraped every 2 s) and KEDA
  # on: this cluster has neither CRD, so they are rendered here for their scrape job and query.
  helm template "$RELEASE" charts/resnet-serve --namespace "$NS" \
    -f charts/resnet-serve/values-cpu.yaml "${SERVE_SETS[@]}" \
    --set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.interval=2s \
    --set autoscaling.enabled=true --set autoscaling.kind=keda >"$MONITORING_OBJECTS"
  "$PYTHON" scripts/e2e/prometheus.py config --rendered "$MONITORING_OBJECTS" --api "$API" \
    --ca "$PKI/ca.crt" --token-file "$STATE/prometheus.token" --interval 2s >"$STATE/scrape.yml"
  cp "$STATE/scrape.yml" "$LOGS/scrape.yml"
  local prom_port agent_port
  prom_port=$(free_port) agent_port=$(free_port)
  PROM_URL=http://127.0.0.1:$prom_port AGENT_URL=http://127.0.0.1:$agent_port
  echo '{}' >"$STATE/prometheus.yml"
  bg prometheus prometheus --config.file="$STATE/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus" --web.listen-address="127.0.0.1:$prom_port" \
    --web.enable-remote-write-receiver
  WAIT_LOG=$LOGS/prometheus.log wait_for prometheus 30 curl -fs "$PROM_URL/-/ready"
  bg vmagent "$VMAGENT" -promscrape.config="$STATE/scrape.yml" \
    -promscrape.kubernetesSDCheckInterval=1s -promscrape.suppressDuplicateScrapeTargetErrors \
    -remoteWrite.url="$PROM_URL/api/v1/write" \
    -remoteWrite.tmpDataPath="$STATE/vmagent" -httpListenAddr="127.0.0.1:$agent_port"
  WAIT_LOG=$LOGS/vmagent.log wait_for vmagent 30 curl -fs "$AGENT_URL/health"
  monitoring_discovered "$(server_pod)"
  # Every counter has been scraped once: what they gain from now on is the Locust run's.
  MONITORING_SINCE=$(date +%s.%N)
}

monitoring_queries() {
  step "monitoring: the Locust run in the counters, the KEDA query, the prometheus-adapter rule"
  "$PYTHON" scripts/e2e/prometheus.py queries --url "$PROM_URL" --rendered "$MONITORING_OBJECTS" \
    --namespace "$NS" --pod "$(server_pod)" --since "$MONITORING_SINCE" \
    --locust-stats "$REPORTS/locust/locust_stats.csv" --locust-users "$LOCUST_USERS"
}

monitoring_after_rollout() { # the pod the rollout replaced
  step "monitoring: the rollout's pod is scraped, the replaced one no more; monitoring stopped"
  monitoring_discovered "$(server_pod)" "$1"
  curl -fs "$AGENT_URL/api/v1/targets" >"$LOGS/scrape-targets.json" || true
  pkill_own vmagent
  pkill_own prometheus
  # Not waited for: nothing of the releases is in it, and the cluster goes at the end.
  kubectl delete namespace "$MONITORING_NS" --wait=false
  kubectl delete clusterrolebinding,clusterrole resnet-e2e-prometheus
}

drain_refused() {
  step "kubectl drain: the PodDisruptionBudget keeps the only pod"
  local out
  if out=$(kubectl drain localhost --ignore-daemonsets --delete-emptydir-data --timeout 20s \
      --pod-selector "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=server" 2>&1); then
    kubectl uncordon localhost
    fail "drain evicted the only server pod: $out"
  fi
  kubectl uncordon localhost
  echo "$out" | grep -q "disruption budget" || fail "drain failed for another reason: $out"
  echo "$out" | grep "disruption budget" | head -1
  [ -n "$(server_pod)" ] || fail "the server pod is gone after the refused drain"
  echo "PASS: drain refused by the PDB"
}

# The upgrade turns authentication on: the client sends its token from the start (a service
# without authentication ignores it), and `helm test` must then pass with the token too. It
# also moves the gRPC port from the native server (the default) to grpcio's (`grpc.server`),
# which a gRPC call through the Service then reaches.
TOKEN=e2e-token-$RANDOM$RANDOM
upgrade_without_drops() {
  step "helm upgrade (authentication on, grpcio's gRPC server) while a client keeps calling through the Service"
  local ip
  ip=$(kube get service "$FULLNAME" -o jsonpath='{.spec.clusterIP}')
  wait_for "kube-proxy's rule for $ip" 30 sh -c "iptables -t nat -S | grep -q -- '-d $ip/32'"
  wait_for "the Service at $ip" 30 curl -fs "http://$ip/readyz"
  bg steady "$PYTHON" scripts/e2e/checks.py steady --url "http://$ip" \
    --stop "$STATE/steady.stop" --report "$REPORTS/steady.json" --token "$TOKEN"
  sleep 3
  local old
  old=$(server_pod)
  helm upgrade "$RELEASE" charts/resnet-serve --namespace "$NS" --reuse-values \
    --set-string secretSettings.SERVE_AUTH_TOKENS="$TOKEN" --set grpc.server=grpcio \
    --wait --timeout 10m
  kube rollout status "deployment/$FULLNAME" --timeout 5m
  WAIT_LOG= wait_for "the old pod $old to go" 120 sh -c "! kubectl -n $NS get pod $old"
  sleep 3
  touch "$STATE/steady.stop"
  local steady_pid
  steady_pid=$(awk '$2 == "steady" {print $1}' "$PIDS")
  while kill -0 "$steady_pid" 2>/dev/null; do sleep 0.5; done
  cat "$LOGS/steady.log"
  "$PYTHON" - "$REPORTS/steady.json" <<'EOF' || fail "requests were dropped during the rollout"
import json, sys
r = json.load(open(sys.argv[1]))
sys.exit(0 if r["ok"] > 0 and not r["failures"] else 1)
EOF
  [ "$(server_pod)" != "$old" ] || fail "the upgrade did not replace the pod"
  echo "PASS: rollout $old -> $(server_pod), no request dropped"

  step "helm test with authentication on"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: image/png' \
    --data-binary @"$STATE/expected.json" "http://$ip/v1/classify")
  [ "$status" = 401 ] || fail "without a token: HTTP $status, expected 401 (authentication off?)"
  helm test "$RELEASE" --namespace "$NS" --logs --timeout 5m

  step "port-forward: classify over gRPC on grpcio's server, with the token"
  local http grpc
  http=$(free_port) grpc=$(free_port)
  bg port-forward-grpcio kubectl --namespace "$NS" port-forward "service/$FULLNAME" \
    "$http:80" "$grpc:8001"
  wait_for "port-forward" 30 curl -fs "http://127.0.0.1:$http/readyz"
  "$PYTHON" scripts/e2e/checks.py grpc --target "127.0.0.1:$grpc" \
    --expected "$STATE/expected.json" --token "$TOKEN"
  pkill_own port-forward-grpcio
  kube logs "deployment/$FULLNAME" -c server | grep -q 'gRPC (grpcio)' \
    || fail "the server's log says no grpcio gRPC server"
}

scheduler_reason() {
  local message
  message=$(kubectl -n "$GPU_NS" get pod "$1" \
    -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}')
  [ -n "$message" ] || message=$(kubectl -n "$GPU_NS" get events \
    --field-selector "involvedObject.name=$1,reason=FailedScheduling" \
    -o jsonpath='{.items[-1:].message}')
  [ -n "$message" ] && echo "$message"
}

gpu_scheduling() {
  step "GPU values on the fake GPU nodes: placement, and the scheduler's reasons for a pod that does not fit"
  kubectl apply -f - <<EOF
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: nvidia}
handler: nvidia
EOF
  kubectl create namespace "$GPU_NS"
  # Three replicas, two GPUs: one pod cannot fit. Small CPU, memory and disk requests: a
  # hollow node offers 1 CPU, 3.75 GiB and no ephemeral storage.
  helm install gpu charts/resnet-serve --namespace "$GPU_NS" \
    -f charts/resnet-serve/values-gpu-operator.yaml \
    --set image.repository="$SERVE_IMAGE" --set image.tag="$SERVE_TAG" \
    --set replicaCount=3 --set resources.requests.cpu=100m \
    --set resources.requests.memory=512Mi --set resources.limits.memory=512Mi \
    --set-string resources.requests.ephemeral-storage=0 \
    --set podDisruptionBudget.enabled=false
  wait_for "two GPU pods scheduled" 60 sh -c \
    "[ \$(kubectl -n $GPU_NS get pods -o jsonpath='{range .items[*]}{.spec.nodeName}{\"\\n\"}{end}' | grep -c '^gpu-') = 2 ]"
  kubectl -n "$GPU_NS" get pods -o wide
  local nodes pending reason limit
  nodes=$(kubectl -n "$GPU_NS" get pods -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort | grep . | tr '\n' ' ')
  [ "$nodes" = "gpu-1 gpu-2 " ] || fail "GPU pods on '$nodes', expected one on each of gpu-1 and gpu-2"
  limit=$(kubectl -n "$GPU_NS" get pods -o jsonpath='{.items[0].spec.containers[0].resources.limits.nvidia\.com/gpu}')
  [ "$limit" = 1 ] || fail "GPU limit '$limit'"
  # The unscheduled one (phase Pending alone would also match a scheduled pod still creating).
  pending=$(kubectl -n "$GPU_NS" get pods \
    -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}' | awk 'NF == 1 {print $1}')
  [ "$(echo "$pending" | grep -c .)" = 1 ] || fail "expected one unscheduled GPU pod, found: '$pending'"
  # The scheduler's reason: the pod's PodScheduled condition, or its FailedScheduling event
  # (whichever the API server has first on a loaded machine).
  wait_for "the scheduler's reason for $pending" 120 scheduler_reason "$pending"
  reason=$(scheduler_reason "$pending")
  echo "Pending $pending: $reason"
  echo "$reason" | grep -q "Insufficient nvidia.com/gpu" || fail "no 'Insufficient nvidia.com/gpu' in: $reason"
  echo "$reason" | grep -q "node selector\|affinity" || fail "no node-selector refusal (node localhost) in: $reason"
  echo "PASS: GPU pods on gpu-1 and gpu-2; the third refused: $reason"
  helm uninstall gpu --namespace "$GPU_NS" --wait
}

uninstall_leaves_nothing() {
  step "helm uninstall leaves nothing behind (but the last helm test pod, which Helm keeps)"
  helm uninstall "$RELEASE" --namespace "$NS" --wait
  local selector="app.kubernetes.io/component!=test"
  wait_for "the release's pods to go" 180 sh -c \
    "[ -z \"\$(kubectl -n $NS get pods -l '$selector' -o name)\" ] && [ -z \"\$(kubectl -n $GPU_NS get pods -o name)\" ]"
  local left ns
  for ns in "$NS" "$GPU_NS"; do
    left=$(kubectl -n "$ns" get all,configmap,secret,serviceaccount,pdb,networkpolicy,ingress,role,rolebinding \
      -l "app.kubernetes.io/managed-by=Helm,$selector" -o name)
    [ -z "$left" ] || fail "left in $ns after helm uninstall: $left"
    [ -z "$(helm list -n "$ns" -q)" ] || fail "releases left in $ns"
  done
  # Helm never deletes test hooks; their pod stays for its logs (docs/DEPLOY.md).
  left=$(kubectl -n "$NS" get pods -l "app.kubernetes.io/instance=$RELEASE" -o name)
  [ "$left" = "pod/$FULLNAME-test" ] || fail "expected only the test pod left, found: $left"
  kubectl -n "$NS" delete pod "$FULLNAME-test" --wait --timeout 60s
  # What the test made itself: the namespaces, the claim and volume of the weights.
  kubectl delete namespace "$NS" "$GPU_NS" --wait --timeout 120s
  kubectl delete persistentvolume resnet-e2e-weights
  kubectl delete runtimeclass nvidia
  echo "PASS: nothing of the releases is left but the helm test pod, deleted by hand"
}

scenario() {
  install_and_test
  monitoring_start
  locust_job
  monitoring_queries
  drain_refused
  local before
  before=$(server_pod)
  upgrade_without_drops
  monitoring_after_rollout "$before"
  gpu_scheduling
  uninstall_leaves_nothing
}
