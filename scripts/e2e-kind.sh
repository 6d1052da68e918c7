#!/usr/bin/env bash
# make e2e-kind: the CPU image in a throwaway kind cluster, end to end.
# Needs Docker and kind (https://kind.sigs.k8s.io), and the cluster must reach Docker Hub for
# the helm test pod's and Locust's images; helm and kubectl come from .tools/.
# NOT exercised by this project's CI (no Docker engine there): see docs/DEPLOY.md.
#
# What it proves beyond the offline tests: the CPU image builds and has what the chart can
# switch on (the redis extra, CA certificates); the server starts with an in-chart Redis and
# runs a job through it; it sizes its preprocessing pool to the pod's CPU request
# (SERVE_CPUS); /metrics answers on the Service's metrics port; `helm test` passes within the
# timeout NOTES prints; and the Locust chart runs once in the cluster and leaves its reports.
set -euo pipefail

HELM=${HELM:-helm} KUBECTL=${KUBECTL:-kubectl} PYTHON=${PYTHON:-python3}
IMAGE=${IMAGE:-resnet-serve} TAG=${TAG:-0.1.0}
CLUSTER=${CLUSTER:-resnet-e2e-$$}
RELEASE=e2e NAMESPACE=resnet-e2e PORT=${PORT:-18080} METRICS_PORT=${METRICS_PORT:-19090}
REPORTS=${REPORTS:-reports/e2e-kind}

for tool in docker kind curl "$HELM" "$KUBECTL"; do
  command -v "$tool" >/dev/null || { echo "e2e-kind needs $tool on PATH" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e-kind needs a running Docker engine" >&2; exit 2; }
"$PYTHON" -c "import matplotlib" 2>/dev/null \
  || { echo "e2e-kind needs the loadtest extra in $PYTHON (for the report)" >&2; exit 2; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  kind delete cluster --name "$CLUSTER" || true
}
trap cleanup EXIT
kube() { "$KUBECTL" --namespace "$NAMESPACE" "$@"; }

# The image: what redis.mode and HTTPS downloads or callbacks need is in it.
make image-cpu IMAGE="$IMAGE" TAG="$TAG"
docker run --rm --entrypoint python3 "$IMAGE:$TAG-cpu" -c \
  "import ssl, redis.asyncio; assert ssl.create_default_context().cert_store_stats()['x509_ca'] > 0"

kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image --name "$CLUSTER" "$IMAGE:$TAG-cpu"

# The server, with the in-chart Redis; a 500m CPU request, which SERVE_CPUS rounds up to 1.
"$HELM" install "$RELEASE" charts/resnet-serve --namespace "$NAMESPACE" --create-namespace \
  -f charts/resnet-serve/values-cpu.yaml \
  --set image.repository="$IMAGE" --set image.tag="$TAG-cpu" --set image.pullPolicy=Never \
  --set replicaCount=1 --set resources.requests.cpu=500m \
  --set resources.requests.memory=3Gi --set resources.limits.memory=3Gi \
  --set redis.mode=internal --wait --timeout 15m
# The timeout NOTES prints for helm test.
test_timeout=$("$HELM" get notes "$RELEASE" --namespace "$NAMESPACE" \
  | sed -n 's/.*helm test .*--timeout \([0-9]*s\).*/\1/p')
"$HELM" test "$RELEASE" --namespace "$NAMESPACE" --logs --timeout "$test_timeout"

kube port-forward "service/$RELEASE-resnet-serve" "$PORT:80" "$METRICS_PORT:9090" &
pids+=($!)
for _ in $(seq 30); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
curl -fs "http://127.0.0.1:$PORT/v1/models" | "$PYTHON" -c \
  "import json, sys; m = json.load(sys.stdin)['models'][0]; \
   assert m['preprocess_workers'] == 1, m; print('preprocess workers:', m['preprocess_workers'])"
curl -fs "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^serve_images_in_flight '

# An asynchronous job through the in-chart Redis.
png=$(mktemp)
"$PYTHON" -c "import sys; sys.path.insert(0, 'charts/resnet-serve/files'); import helm_test; \
  sys.stdout.buffer.write(helm_test.test_png())" >"$png"
job=$(curl -fs -F "images=@$png;type=image/png" "http://127.0.0.1:$PORT/v1/jobs" \
  | "$PYTHON" -c "import json, sys; print(json.load(sys.stdin)['id'])")
for _ in $(seq 60); do
  status=$(curl -fs "http://127.0.0.1:$PORT/v1/jobs/$job" \
    | "$PYTHON" -c "import json, sys; print(json.load(sys.stdin)['status'])")
  [ "$status" = succeeded ] && break
  sleep 1
done
[ "$status" = succeeded ] || { echo "job $job: $status" >&2; exit 1; }

# The in-cluster load test: one headless minute, then its reports out of the master's pod.
"$HELM" install lt charts/locust --namespace "$NAMESPACE" \
  --set targetHost="http://$RELEASE-resnet-serve.$NAMESPACE.svc" \
  --set test.autostart=true --set test.shape=constant --set test.users=4 --set test.runTime=1m \
  --set workers.replicas=1 --set workers.resources.requests.cpu=250m \
  --set master.resources.requests.cpu=250m --set reports.keepAliveSeconds=600
master=$(kube get job -l app.kubernetes.io/instance=lt,app.kubernetes.io/component=master \
  -o jsonpath='{.items[0].metadata.name}')
for _ in $(seq 120); do
  kube logs "job/$master" 2>/dev/null | grep -q 'locust exited with status' && break
  sleep 5
done
kube logs "job/$master" | grep 'locust exited with status 0'
pod=$(kube get pods -l "batch.kubernetes.io/job-name=$master" -o jsonpath='{.items[0].metadata.name}')
rm -rf "$REPORTS" && mkdir -p "$(dirname "$REPORTS")"
kube cp "$pod:/reports" "$REPORTS"
test -s "$REPORTS/locust.html" && test -s "$REPORTS/locust_stats_history.csv"
"$PYTHON" -m loadtest report "$REPORTS"
ls "$REPORTS"/*.png >/dev/null
echo "e2e-kind: passed (reports in $REPORTS)"
