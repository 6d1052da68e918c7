#!/usr/bin/env bash
# make e2e-kind: the CPU image in a throwaway kind cluster, end to end.
# Needs Docker and kind (https://kind.sigs.k8s.io); helm and kubectl come from .tools/.
# NOT exercised by this project's CI (no Docker engine there): see docs/DEPLOY.md.
set -euo pipefail

HELM=${HELM:-helm} KUBECTL=${KUBECTL:-kubectl} PYTHON=${PYTHON:-python3}
IMAGE=${IMAGE:-resnet-serve} TAG=${TAG:-0.1.0}
CLUSTER=${CLUSTER:-resnet-e2e-$$}
RELEASE=e2e NAMESPACE=resnet-e2e PORT=${PORT:-18080}
LOCUSTFILE=${LOCUSTFILE:-loadtest/suite/locustfile.py}

for tool in docker kind "$HELM" "$KUBECTL"; do
  command -v "$tool" >/dev/null || { echo "e2e-kind needs $tool on PATH" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e-kind needs a running Docker engine" >&2; exit 2; }
[ -f "$LOCUSTFILE" ] || { echo "e2e-kind needs $LOCUSTFILE (the load-test suite)" >&2; exit 2; }
"$PYTHON" -m locust --version >/dev/null || { echo "e2e-kind needs locust in $PYTHON" >&2; exit 2; }

pf_pid=""
cleanup() {
  [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null || true
  kind delete cluster --name "$CLUSTER" || true
}
trap cleanup EXIT

make image-cpu IMAGE="$IMAGE" TAG="$TAG"
kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image --name "$CLUSTER" "$IMAGE:$TAG-cpu"

"$HELM" install "$RELEASE" charts/resnet-serve --namespace "$NAMESPACE" --create-namespace \
  -f charts/resnet-serve/values-cpu.yaml \
  --set image.repository="$IMAGE" --set image.tag="$TAG-cpu" --set image.pullPolicy=Never \
  --set replicaCount=1 --set resources.requests.cpu=500m --set resources.requests.memory=2Gi \
  --wait --timeout 15m
"$HELM" test "$RELEASE" --namespace "$NAMESPACE" --logs --timeout 15m

"$KUBECTL" --namespace "$NAMESPACE" port-forward "service/$RELEASE-resnet-serve" "$PORT:80" &
pf_pid=$!
for _ in $(seq 30); do curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
"$PYTHON" -m locust -f "$LOCUSTFILE" --headless --users 8 --spawn-rate 4 --run-time 1m \
  --host "http://127.0.0.1:$PORT" --only-summary
echo "e2e-kind: passed"
