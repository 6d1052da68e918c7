#!/usr/bin/env bash
# Kubernetes v1.20.2 server binaries from Debian bookworm's `kubernetes` source package, built
# once into $E2E_CACHE/kube/bin (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kubemark, kube-proxy). Debian's golang-go (1.19) builds that tree with its vendor/
# through upstream's `make` (a plain `go build -mod=vendor` does not: the tree needs its
# generated files and build tags). ~11 minutes on 2 idle cores; nothing to do when cached.
# The source comes through apt itself, from a private sources list and lists directory in the
# cache, so the machine's apt configuration is left as it is.
set -euo pipefail
CACHE=${E2E_CACHE:?}
BIN=$CACHE/kube/bin
WHAT=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubemark kube-proxy)

have_all() { for b in "${WHAT[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }
if have_all; then echo "kubernetes binaries cached in $BIN"; exit 0; fi

src=$CACHE/kube/src
mkdir -p "$src" "$BIN"
if [ ! -f "$src/tree/Makefile" ]; then
  apt_dir=$CACHE/kube/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/parts"
  cat >"$apt_dir/sources.list" <<SRC
deb-src http://deb.debian.org/debian bookworm main
SRC
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/parts"
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
            -o "APT::Sandbox::User=root" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
  apt-get "${apt_opts[@]}" update -q
  rm -rf "$src/get" && mkdir -p "$src/get"
  (cd "$src/get" && apt-get "${apt_opts[@]}" source -q --only-source kubernetes)
  tree=$(find "$src/get" -mindepth 1 -maxdepth 1 -type d | head -1)
  [ -f "$tree/Makefile" ] || { echo "no Makefile in the kubernetes source ($tree)" >&2; exit 1; }
  rm -rf "$src/tree" && mv "$tree" "$src/tree" && rm -rf "$src/get"
fi

cd "$src/tree"
# The version the binaries report, where the tree itself does not say (a tarball has no .git).
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=debian-1.20.5+really1.20.2
export GOFLAGS=-mod=vendor GO111MODULE=on GOPROXY=off GOTOOLCHAIN=local
export GOCACHE=$CACHE/kube/gocache GOPATH=$CACHE/kube/gopath
start=$SECONDS
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kubemark cmd/kube-proxy"
for b in "${WHAT[@]}"; do install -m 0755 "_output/local/bin/linux/amd64/$b" "$BIN/$b"; done
echo "kubernetes binaries built in $((SECONDS - start)) s into $BIN"
