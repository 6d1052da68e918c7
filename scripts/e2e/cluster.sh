# Sourced by scripts/e2e/run.sh: a throwaway Kubernetes v1.20 cluster on this machine.
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler on loopback; one real node,
# `localhost` (kubelet + a private dockerd on a bridge of its own); two kubemark ("hollow")
# nodes that advertise nvidia.com/gpu; kube-proxy (iptables mode, masquerading all Service
# traffic so that replies come back through the host) for ClusterIPs; scripts/e2e/dns.py for
# Service names. Every process goes into $STATE/pids and cluster_down stops them; nothing is
# installed as a service. Forwarding is on while the test runs (ClusterIP traffic between two
# pods is routed by the host), fenced to the bridge by two FORWARD rules; the sysctls it
# changes are restored at the end.

PIDS=$STATE/pids
KUBE_BIN=$CACHE/kube/bin
PKI=$STATE/pki
KUBECONFIG=$STATE/admin.kubeconfig
export KUBECONFIG
DOCKER_SOCK=$STATE/docker.sock
export DOCKER_HOST=unix://$DOCKER_SOCK

# Addresses: loopback for the control plane; the bridge (made here, removed at the end) for
# the pods. The Service range is virtual: kube-proxy redirects it to its listeners on the bridge.
BRIDGE=rse2e0
BRIDGE_IP=10.213.1.1
BRIDGE_CIDR=10.213.1.0/24
SERVICE_CIDR=10.213.0.0/24
API_PORT=26443
ETCD_PORT=23790
ETCD_PEER_PORT=23800
KUBELET_PORT=20250
HOLLOW_PORTS=(20251 20252)
HOLLOW_NODES=(gpu-1 gpu-2)
API=https://127.0.0.1:$API_PORT

# start NAME CMD...: run CMD in the background, its output in $LOGS/NAME.log, its pid kept
# with the process's start time, so that a later cleanup never signals a process that merely
# reuses the number (after a reboot, or on another machine restored from this one's disk).
# It does not inherit run.sh's lock (fd 9): a process that outlives a killed run (dockerd's
# shims) must not keep the next run out.
start() {
  local name=$1; shift
  "$@" >"$LOGS/$name.log" 2>&1 9>&- &
  echo "$! $name $(started_at $!)" >>"$PIDS"
}

# started_at PID: the process's start time in clock ticks since boot (/proc/PID/stat field 22),
# or "-" when it has already gone. The fields are counted after the command name's ")", since
# the name itself may hold spaces.
started_at() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -; return; }
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  echo "${20:--}"
}

# ours PID START: PID is still the process this test started (START from $PIDS).
ours() { [ "$2" != - ] && [ "$(started_at "$1")" = "$2" ]; }

# wait_for WHAT SECONDS CMD...: poll CMD once a second; fail with WHAT and a log tail.
wait_for() {
  local what=$1 limit=$2 log=${WAIT_LOG:-}; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "e2e: $what not ready after ${limit}s" >&2
      [ -n "$log" ] && [ -f "$log" ] && tail -n 30 "$log" >&2
      return 1
    fi
    sleep 1
  done
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

check_ports() {
  local p
  for p in $API_PORT $ETCD_PORT $ETCD_PEER_PORT $KUBELET_PORT "${HOLLOW_PORTS[@]}" 20248 20256 20249 "$WHEELS_PORT"; do
    port_free "$p" || fail "port $p is in use on this machine (another \`make e2e\`?)"
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    fail "bridge $BRIDGE exists: another \`make e2e\` runs, or one was killed (ip link del $BRIDGE)"
  fi
  if ip -4 route show | grep -v "^default" | grep -q "^10\.213\."; then
    fail "10.213.0.0/16, the addresses this test gives its Services and pods, is routed here"
  fi
}

# pki: a CA, the API server's serving certificate, clients for the admin (system:masters) and
# for each node (system:node:<name>), the service-account key pair.
make_pki() {
  mkdir -p "$PKI" && cd "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
    -subj "/CN=resnet-e2e-ca" 2>/dev/null
  cert() { # name subject [san]
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    if [ -n "${3:-}" ]; then printf 'subjectAltName=%s\n' "$3" >"$1.ext"; else : >"$1.ext"; fi
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,IP:127.0.0.1,IP:10.213.0.1,IP:$BRIDGE_IP"
  cert admin "/O=system:masters/CN=e2e-admin"
  local node
  for node in localhost "${HOLLOW_NODES[@]}"; do cert "node-$node" "/O=system:nodes/CN=system:node:$node"; done
  openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

kubeconfig() { # file user-cert-name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: $API, certificate-authority: $PKI/ca.crt}
users:
- name: e2e
  user: {client-certificate: $PKI/$2.crt, client-key: $PKI/$2.key}
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e}
current-context: e2e
EOF
}

start_dockerd() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # This machine lacks CAP_SYS_RESOURCE: a negative OOM score (the kubelet asks -998 for its
  # pause containers) makes runc fail ("can't get final child's PID from pipe: EOF"). The
  # wrapper sets such scores to 0 in the bundle before calling runc.
  mkdir -p "$STATE/bin"
  cat >"$STATE/bin/runc-oom0" <<'EOF'
#!/bin/sh
bundle=.
prev=
for arg in "$@"; do
  case $prev in --bundle|-b) bundle=$arg ;; esac
  case $arg in --bundle=*) bundle=${arg#--bundle=} ;; esac
  prev=$arg
done
if [ -f "$bundle/config.json" ]; then
  sed -i 's/"oomScoreAdj":-[0-9]*/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec runc "$@"
EOF
  chmod +x "$STATE/bin/runc-oom0"
  mkdir -p "$CACHE/docker"
  # No iptables rules and no masquerading: containers reach the bridge and the host, never
  # beyond. Image builds use the host's network (docker build --network host) instead.
  start dockerd dockerd --host "$DOCKER_HOST" --data-root "$CACHE/docker" \
    --exec-root "$STATE/docker-exec" --pidfile "$STATE/docker.pid" \
    --bridge "$BRIDGE" --iptables=false --ip-masq=false --ip-forward=false --ipv6=false \
    --storage-driver overlay2 --oom-score-adjust 0 \
    --add-runtime "oom0=$STATE/bin/runc-oom0" --default-runtime oom0 \
    --containerd-namespace resnet-e2e --containerd-plugins-namespace resnet-e2e-plugins
  WAIT_LOG=$LOGS/dockerd.log wait_for dockerd 60 docker info
}

start_control_plane() {
  make_pki
  kubeconfig "$KUBECONFIG" admin
  local node
  for node in localhost "${HOLLOW_NODES[@]}"; do kubeconfig "$STATE/node-$node.kubeconfig" "node-$node"; done
  start etcd etcd --name e2e --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT"
  WAIT_LOG=$LOGS/etcd.log wait_for etcd 30 curl -fs "http://127.0.0.1:$ETCD_PORT/health"
  start kube-apiserver "$KUBE_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" --insecure-port 0 \
    --advertise-address "$BRIDGE_IP" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --kubelet-client-certificate "$PKI/admin.crt" --kubelet-client-key "$PKI/admin.key" \
    --kubelet-preferred-address-types Hostname,InternalIP \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --allow-privileged=true
  WAIT_LOG=$LOGS/kube-apiserver.log wait_for kube-apiserver 60 \
    curl -fs --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$API/readyz"
  start kube-controller-manager "$KUBE_BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG" --leader-elect=false --port 0 --secure-port 0 \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --use-service-account-credentials=false --controllers '*,-csrsigning,-csrapproving,-csrcleaner'
  start kube-scheduler "$KUBE_BIN/kube-scheduler" \
    --kubeconfig "$KUBECONFIG" --leader-elect=false --port 0 --secure-port 0
}

start_nodes() {
  note_kube_chains
  mkdir -p "$STATE/kubelet" "$STATE/kubelet-plugins"
  start kubelet "$KUBE_BIN/kubelet" \
    --kubeconfig "$STATE/node-localhost.kubeconfig" --hostname-override localhost \
    --container-runtime docker --docker-endpoint "$DOCKER_HOST" \
    --container-runtime-endpoint "unix://$STATE/dockershim.sock" \
    --image-service-endpoint "unix://$STATE/dockershim.sock" \
    --pod-infra-container-image "$PAUSE_IMAGE" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" \
    --volume-plugin-dir "$STATE/kubelet-plugins" --seccomp-profile-root "$STATE/kubelet/seccomp" \
    --client-ca-file "$PKI/ca.crt" --anonymous-auth=false --authorization-mode AlwaysAllow \
    --address 127.0.0.1 --port "$KUBELET_PORT" --read-only-port 0 \
    --healthz-bind-address 127.0.0.1 --healthz-port 20248 \
    --cgroup-driver cgroupfs --fail-swap-on=false \
    --cluster-dns "$BRIDGE_IP" --cluster-domain cluster.local \
    --eviction-hard 'memory.available<100Mi' --image-gc-high-threshold 100 \
    --serialize-image-pulls=false --max-pods 30
  local i
  for i in 0 1; do
    local name=${HOLLOW_NODES[$i]}
    # kubemark's fake runtime listens on a fixed /tmp path: each hollow node gets a /tmp of
    # its own (a private mount namespace with a tmpfs there).
    start "hollow-$name" unshare --mount --propagation private sh -c \
      'mount -t tmpfs -o size=64m tmpfs /tmp && exec "$@"' sh \
      "$KUBE_BIN/kubemark" --morph kubelet --name "$name" \
      --kubeconfig "$STATE/node-$name.kubeconfig" \
      --kubelet-port "${HOLLOW_PORTS[$i]}" --kubelet-read-only-port 0 \
      --node-labels nvidia.com/gpu.present=true,e2e.resnet-serve/hollow=true \
      --register-with-taints nvidia.com/gpu=present:NoSchedule
  done
  fence_bridge
  # Userspace mode would need a file limit above this machine's hard limit (64000 > 20000).
  start kube-proxy "$KUBE_BIN/kube-proxy" --kubeconfig "$KUBECONFIG" \
    --proxy-mode iptables --masquerade-all --bind-address "$BRIDGE_IP" \
    --hostname-override localhost \
    --healthz-bind-address 127.0.0.1:20256 --metrics-bind-address 127.0.0.1:20249 \
    --conntrack-max-per-core 0
  WAIT_LOG=$LOGS/kube-proxy.log wait_for kube-proxy 30 curl -fs http://127.0.0.1:20256/healthz
  start dns "$PYTHON" scripts/e2e/dns.py --listen "$BRIDGE_IP" --server "$API" \
    --ca "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key"
  WAIT_LOG=$LOGS/kubelet.log wait_for "node localhost Ready" 120 \
    kubectl wait --for=condition=Ready node/localhost --timeout=1s
  for name in "${HOLLOW_NODES[@]}"; do
    WAIT_LOG=$LOGS/hollow-$name.log wait_for "hollow node $name Ready" 120 \
      kubectl wait --for=condition=Ready "node/$name" --timeout=1s
    # What the NVIDIA device plugin would advertise; the scheduler counts it like a real one.
    kubectl patch node "$name" --subresource=status --type=json \
      -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"1"}]' >/dev/null
  done
  wait_for "nvidia.com/gpu on the hollow nodes" 30 gpu_allocatable_is 2
  wait_for "the default ServiceAccount" 60 kubectl get serviceaccount default
}

# Forwarding for ClusterIP traffic between pods, and only between the bridge's own addresses:
# nothing from the bridge leaves by another interface, nothing from elsewhere enters it.
FENCE=(-m comment --comment resnet-e2e -j DROP)
fence_bridge() {
  echo "$(sysctl -n net.ipv4.ip_forward) $(sysctl -n net.ipv4.conf.all.route_localnet)" \
    >"$STATE/sysctl.saved"
  iptables -I FORWARD -i "$BRIDGE" ! -o "$BRIDGE" "${FENCE[@]}"
  iptables -I FORWARD -o "$BRIDGE" ! -i "$BRIDGE" "${FENCE[@]}"
  sysctl -qw net.ipv4.ip_forward=1
}

unfence_bridge() {
  if [ -f "$STATE/sysctl.saved" ]; then
    local forward localnet
    read -r forward localnet <"$STATE/sysctl.saved"
    sysctl -qw net.ipv4.ip_forward="$forward" net.ipv4.conf.all.route_localnet="$localnet"
    rm -f "$STATE/sysctl.saved"
  fi
  while iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" "${FENCE[@]}" 2>/dev/null; do :; done
  while iptables -D FORWARD -o "$BRIDGE" ! -i "$BRIDGE" "${FENCE[@]}" 2>/dev/null; do :; done
}

# The kubelet and kube-proxy make KUBE-* iptables chains (and jumps to them from INPUT,
# OUTPUT...); kube-proxy --cleanup removes its own only. Where the machine had none before the
# test ($STATE/iptables.ours), all of them go at the end.
note_kube_chains() {
  iptables-save 2>/dev/null | grep -q '^:KUBE-' || touch "$STATE/iptables.ours"
}

remove_kube_chains() {
  [ -f "$STATE/iptables.ours" ] || return 0
  local table rule chain
  for table in filter nat mangle; do
    iptables -t "$table" -S | grep -E '^-A [A-Z]+ .*-j KUBE-' | grep -vE '^-A KUBE-' | sed 's/^-A /-D /' |
      while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null || true; done
    for chain in $(iptables -t "$table" -S | awk '/^-N KUBE-/ {print $2}'); do iptables -t "$table" -F "$chain"; done
    for chain in $(iptables -t "$table" -S | awk '/^-N KUBE-/ {print $2}'); do iptables -t "$table" -X "$chain"; done
  done
  rm -f "$STATE/iptables.ours"
}

gpu_allocatable_is() {
  [ "$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.allocatable.nvidia\.com/gpu}{"\n"}{end}' | grep -c '^1$')" = "$1" ]
}

# cluster_down: every process this test started, newest first; the bridge and the fake pods'
# blackhole route; kube-proxy's iptables chains; the kubelet's mounts. Safe to call twice, and
# after a run that was killed, or whose state directory outlived its processes: it is cleanup,
# so no step stops the rest (errexit is off for its body), and only processes that are still
# ours are signalled.
cluster_down() {
  local -
  set +e
  if [ -f "$PIDS" ]; then
    local pid name start
    # Containers of the real node go first, while dockerd still runs.
    if [ -S "$DOCKER_SOCK" ] && docker info >/dev/null 2>&1; then
      pkill_own kubelet
      local ids
      ids=$(docker ps -aq --filter label=io.kubernetes.pod.namespace 2>/dev/null)
      [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
    fi
    tac "$PIDS" | while read -r pid name start; do
      ours "$pid" "$start" && kill "$pid" 2>/dev/null
    done
    local deadline=$((SECONDS + 30))
    tac "$PIDS" | while read -r pid name start; do
      while ours "$pid" "$start" && ((SECONDS < deadline)); do sleep 0.2; done
      if ours "$pid" "$start"; then
        echo "e2e: $name ($pid) ignored SIGTERM, killing" >&2
        kill -9 "$pid" 2>/dev/null
      fi
    done
    rm -f "$PIDS"
  fi
  stop_strays
  [ -x "$KUBE_BIN/kube-proxy" ] && "$KUBE_BIN/kube-proxy" --cleanup >/dev/null 2>&1
  unfence_bridge
  remove_kube_chains
  unmount_state
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  [ -n "${FAKE_POD_IP:-}" ] && ip route del blackhole "$FAKE_POD_IP/32" 2>/dev/null
  return 0
}

# stop_strays: what outlived its parent, found by the paths only this test uses: containerd's
# shims under $STATE (and the pods they keep) when dockerd was killed before it could stop
# them, a kubelet from the cached binaries. Children go first, so that a shim's container
# (the init of its own pid namespace, which takes the namespace with it) does not outlive it.
stop_strays() {
  local pid
  for pid in $(pgrep -f -- "$STATE/|$KUBE_BIN/"); do
    [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ] && continue
    pkill -9 -P "$pid" 2>/dev/null
    kill -9 "$pid" 2>/dev/null
  done
  return 0
}

# pkill_own NAME: stop the process this test started under NAME (from $PIDS).
pkill_own() {
  local pid start
  read -r pid start < <(awk -v n="$1" '$2 == n {print $1, $3}' "$PIDS") || true
  [ -n "$pid" ] && ours "$pid" "$start" || return 0
  kill "$pid" 2>/dev/null
  local deadline=$((SECONDS + 20))
  while ours "$pid" "$start" && ((SECONDS < deadline)); do sleep 0.2; done
  ours "$pid" "$start" && kill -9 "$pid" 2>/dev/null
  return 0
}

# The kubelet's and dockerd's mounts under $STATE (secrets, emptyDirs, network namespaces).
unmount_state() {
  local m
  awk -v d="$STATE/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}
