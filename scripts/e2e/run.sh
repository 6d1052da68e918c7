#!/usr/bin/env bash
# make e2e: the chart on a real Kubernetes (v1.20, built here from Debian's source package),
# the project's CPU image built from docker/Dockerfile, end to end, then everything torn down.
# docs/DEPLOY.md ("make e2e") says what it proves and what still needs a GPU cluster.
#
# Needs root (it starts dockerd, a kubelet, a bridge) and Debian packages it installs when
# missing. Traffic goes to loopback and to the bridge it makes (10.213.1.0/24) only: the
# Service range (10.213.0.0/24) is routed onto that bridge, FORWARD rules keep the bridge's
# traffic on it, and the fake nodes' pod address is blackholed. It fails, with the reason, when the machine cannot run it: never a silent pass.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
# One cache per machine, not per clone: every checkout (and CI's fresh clone) reuses the
# Kubernetes build, the base image and the wheelhouse.
CACHE=${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-serve/e2e}
STATE=${E2E_STATE:-/var/tmp/resnet-e2e}
REPORTS=$REPO/${REPORTS:-reports/e2e}
LOGS=$REPORTS/logs
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
PIP=${PIP:-$REPO/.venv/bin/pip}
export PATH=$REPO/.tools/bin:$PATH  # the pinned helm and kubectl (make tools)
NS=resnet-e2e
GPU_NS=resnet-e2e-gpu
RELEASE=e2e
FULLNAME=$RELEASE-resnet-serve
FAKE_POD_IP=192.168.192.168  # what kubemark's fake runtime reports for every pod
T0=$SECONDS

fail() { echo "e2e: FAIL: $*" >&2; exit 1; }
step() { printf '\n=== [%4ds] %s\n' "$((SECONDS - T0))" "$*"; }

[ "$(id -u)" = 0 ] || fail "needs root: it starts dockerd, a kubelet and a network bridge"
for tool in helm kubectl; do
  command -v "$tool" >/dev/null || fail "$tool missing: run \`make tools\`"
done
[ -x "$PYTHON" ] || fail "$PYTHON missing: run \`make venv\`"

# Debian packages: the Go toolchain and rsync (the Kubernetes build), etcd, Docker, mmdebstrap
# (the base image), socat (port-forward), gcc (the pause binary), openssl (certificates),
# prometheus (the monitoring step; `make e2e` installs it first, without its recommends).
PACKAGES=(golang-go rsync etcd-server docker.io mmdebstrap socat gcc libc6-dev openssl iptables
          conntrack iproute2 util-linux procps curl dpkg-dev prometheus)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "apt-get install ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
fi

mkdir -p "$CACHE" "$LOGS"
CACHE=$(cd "$CACHE" && pwd)
exec 9>"$CACHE/.lock"
flock -n 9 || fail "another \`make e2e\` holds $CACHE/.lock"

# vmagent, the scraper of the monitoring step (scenario.sh): Debian's victoria-metrics package
# unpacked into the cache (installing it would start its service).
VMAGENT=$CACHE/victoria-metrics/usr/bin/vmagent
if [ ! -x "$VMAGENT" ]; then
  step "vmagent: Debian's victoria-metrics package, unpacked into $CACHE/victoria-metrics"
  (
    set -e
    cd "$CACHE" && rm -rf victoria-metrics_*.deb victoria-metrics.tmp
    apt-get download victoria-metrics 2>/dev/null || { apt-get update -q && apt-get download victoria-metrics; }
    dpkg-deb -x victoria-metrics_*.deb victoria-metrics.tmp && rm -f victoria-metrics_*.deb
    rm -rf victoria-metrics && mv victoria-metrics.tmp victoria-metrics
  ) || fail "could not fetch Debian's victoria-metrics package"
fi

# shellcheck source=scripts/e2e/cluster.sh
source scripts/e2e/cluster.sh
# shellcheck source=scripts/e2e/images.sh
source scripts/e2e/images.sh

if [ -f "$PIDS" ]; then
  echo "e2e: stopping what an interrupted run left ($PIDS)"
  cluster_down
fi
unmount_state
rm -rf "$STATE"
mkdir -p "$STATE"
check_ports

result=failed
teardown() {
  local rc=$?
  set +e
  step "teardown"
  [ -d "$STATE/kubelet" ] && kubectl get pods -A -o wide >"$LOGS/pods-at-end.txt" 2>&1
  cluster_down
  rm -rf "$STATE"
  local left
  left=$(ps -eo pid=,args= | grep -E "$STATE|$CACHE/kube/bin|scripts/e2e/dns.py" | grep -v grep)
  [ -n "$left" ] && { echo "e2e: processes left behind:" >&2; echo "$left" >&2; rc=1; }
  if [ "$result" = passed ] && [ "$rc" = 0 ]; then
    echo "e2e: PASSED in $((SECONDS - T0)) s (logs: $LOGS)"
  else
    echo "e2e: FAILED after $((SECONDS - T0)) s (logs: $LOGS)" >&2
    rc=${rc/#0/1}
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

step "Kubernetes v1.20 binaries (cache: $CACHE/kube)"
if ! E2E_CACHE=$CACHE scripts/e2e/build-kube.sh 2>&1 | tee "$LOGS/build-kube.log" \
    | { grep -E "^(kubernetes|E:)" || true; }; then
  fail "building Kubernetes failed (see $LOGS/build-kube.log)"
fi

step "dockerd (private: socket $DOCKER_SOCK, bridge $BRIDGE)"
start_dockerd
ip route replace blackhole "$FAKE_POD_IP/32"

step "images: pause, Debian base, wheelhouse, resnet-serve CPU image, Locust, weights"
build_pause
build_base
fill_wheelhouse
serve_wheels
# (With pipefail the pipeline fails when any part does; the grep part never does: no line
# shown is not a failure.)
if ! build_serve_image 2>&1 | tee "$LOGS/image-build.log" | { grep -E "^(Step|Successfully)" || true; }; then
  tail -n 25 "$LOGS/image-build.log"
  fail "the resnet-serve image did not build (the whole log: $LOGS/image-build.log)"
fi
build_locust_image
pkill_own wheels
make_weights
chmod -R a+rX "$WEIGHTS_DIR"
"$PYTHON" scripts/e2e/checks.py expect --weights "$WEIGHTS_DIR/$WEIGHTS_FILE" >"$STATE/expected.json"
echo "expected top 3: $(cat "$STATE/expected.json")"

step "control plane (etcd, kube-apiserver, controller-manager, scheduler)"
start_control_plane
step "nodes: localhost (kubelet + dockerd), gpu-1 and gpu-2 (kubemark), kube-proxy, DNS"
start_nodes
# The Service range goes onto the test's bridge: whatever kube-proxy has not redirected yet
# stays on this machine.
ip route add "$SERVICE_CIDR" dev "$BRIDGE"
kubectl get nodes -o wide

source scripts/e2e/scenario.sh
scenario
result=passed
