# Sourced by scripts/e2e/run.sh: the images the cluster runs, built on this machine into the
# private dockerd ($CACHE/docker keeps them and their layers between runs). No registry is
# reachable here (Docker Hub, NGC), so:
#   - the pause image is pause.c from the Kubernetes tree, compiled with gcc -static;
#   - the base image is a Debian bookworm root filesystem made by mmdebstrap, `docker import`ed.
#     It stands in for ubuntu:24.04 (CPU_BASE_IMAGE): the CUDA base of the GPU image cannot be
#     fetched here, so the image built is the CPU variant of docker/Dockerfile;
#   - pip inside `docker build` installs from a wheelhouse that the host's pip fills (with the
#     host's own index configuration), served on loopback to the build (--network host).

PAUSE_IMAGE=resnet-e2e/pause:3.4
BASE_IMAGE_E2E=resnet-e2e/debian-base:bookworm
SERVE_IMAGE=resnet-serve
SERVE_TAG=e2e-cpu
LOCUST_IMAGE=resnet-e2e/locust:local
WEIGHTS_DIR=$CACHE/weights
WEIGHTS_FILE=models/resnet50-e2e.weights.h5

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

build_pause() {
  have_image "$PAUSE_IMAGE" && return 0
  local dir=$STATE/pause
  mkdir -p "$dir/root"
  gcc -Os -Wall -Werror -static -DVERSION=v3.4-e2e \
    -o "$dir/root/pause" "$CACHE/kube/src/tree/build/pause/linux/pause.c"
  tar -C "$dir/root" -cf "$dir/pause.tar" pause
  docker import --change 'ENTRYPOINT ["/pause"]' "$dir/pause.tar" "$PAUSE_IMAGE" >/dev/null
}

build_base() {
  have_image "$BASE_IMAGE_E2E" && return 0
  local tar=$CACHE/base/bookworm-minbase.tar
  if [ ! -s "$tar" ]; then
    mkdir -p "$CACHE/base"
    mmdebstrap --variant=minbase --format=tar --include=python3,python3-venv,ca-certificates \
      bookworm "$tar.part" http://deb.debian.org/debian
    mv "$tar.part" "$tar"
  fi
  docker import "$tar" "$BASE_IMAGE_E2E" >/dev/null
}

# The wheels the image's `pip install` needs (the package's dependencies with the extras of
# the CPU image as `make image-cpu` builds it, its build backend, Locust for the load-test
# image), as a PEP 503 index.
WHEEL_KEY_FILES=(pyproject.toml docker/constraints.txt mk/images.mk)
CPU_EXTRAS=$(sed -n 's/^CPU_EXTRAS ?= *//p' mk/images.mk)
fill_wheelhouse() {
  [ -n "$CPU_EXTRAS" ] || fail "no CPU_EXTRAS in mk/images.mk"
  local key
  key=$(cat "${WHEEL_KEY_FILES[@]}" | sha256sum | cut -c1-16)
  WHEELS=$CACHE/wheels
  [ -f "$WHEELS/.key-$key" ] && return 0
  rm -rf "$WHEELS" && mkdir -p "$WHEELS/files"
  "$PIP" download -q --dest "$WHEELS/files" --constraint docker/constraints.txt \
    --only-binary=:all: "setuptools>=77" wheel "locust>=2.30,<3"
  # The project's own dependencies (not the project: the build makes it from source).
  "$PYTHON" - "$WHEELS/deps.txt" "$CPU_EXTRAS" <<'EOF'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in sys.argv[2].split(","):
    deps += project["optional-dependencies"][extra]
open(sys.argv[1], "w").write("\n".join(deps) + "\n")
EOF
  "$PIP" download -q --dest "$WHEELS/files" --constraint docker/constraints.txt \
    --only-binary=:all: -r "$WHEELS/deps.txt"
  # pip evaluates environment markers for the Python it runs on; the image's may differ in
  # its patch release (redis needs async-timeout below 3.11.3). Close the set for the image's.
  local version missing
  version=$(docker run --rm --network none "$BASE_IMAGE_E2E" python3 -c 'import platform; print(platform.python_version())')
  for _ in 1 2 3 4 5; do
    missing=$("$PYTHON" scripts/e2e/checks.py wheel-gaps --wheels "$WHEELS/files" --python "$version")
    [ -z "$missing" ] && break
    echo "wheels for Python $version:" $missing
    mapfile -t reqs <<<"$missing"
    "$PIP" download -q --dest "$WHEELS/files" --constraint docker/constraints.txt \
      --only-binary=:all: --no-deps "${reqs[@]}"
  done
  [ -z "$missing" ] || fail "the wheelhouse misses $missing for Python $version"
  "$PYTHON" - "$WHEELS" <<'EOF'
import pathlib, re, sys, collections
root = pathlib.Path(sys.argv[1])
projects = collections.defaultdict(list)
for f in sorted((root / "files").iterdir()):
    name = re.sub(r"[-_.]+", "-", f.name.split("-")[0]).lower()
    projects[name].append(f.name)
for name, files in projects.items():
    d = root / "simple" / name
    d.mkdir(parents=True, exist_ok=True)
    links = "".join(f'<a href="../../files/{n}">{n}</a><br>\n' for n in files)
    (d / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
EOF
  touch "$WHEELS/.key-$key"
}

# On a fixed port: the address is a build argument, and a new one every run would void
# Docker's layer cache from the first RUN on.
WHEELS_PORT=23880
serve_wheels() {
  start wheels "$PYTHON" -c '
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), handler).serve_forever()
' "$WHEELS" "$WHEELS_PORT"
  WHEELS_URL=http://127.0.0.1:$WHEELS_PORT/simple/
  WAIT_LOG=$LOGS/wheels.log wait_for "the wheelhouse server" 20 curl -fs "$WHEELS_URL"
}

build_serve_image() {
  # docker/Dockerfile's CPU variant through its make target; Docker's layer cache makes a
  # rebuild with an unchanged service/ a matter of seconds. BuildKit would fetch the
  # `# syntax=` frontend from Docker Hub: the classic builder reads the file as is.
  # The build stage gets a tag of its own, so that pruning the untagged images of earlier
  # builds (a service/ change leaves ~5 GB) keeps the layers this build can reuse next time.
  # Called where errexit does not apply (a pipeline with `|| true`): each step returns.
  local stage
  for stage in build-stage ""; do
    DOCKER_BUILDKIT=0 make --no-print-directory image-cpu IMAGE="$SERVE_IMAGE" \
      TAG="e2e${stage:+-$stage}" CPU_BASE_IMAGE="$BASE_IMAGE_E2E" BAKE_WEIGHTS=false \
      DOCKER_BUILD_ARGS="--network host --build-arg PIP_INDEX_URL=$WHEELS_URL${stage:+ --target build}" \
      || return
  done
  docker image prune -f >/dev/null || return
  # What redis.mode, traces and HTTPS downloads or callbacks need is in it.
  docker run --rm --network none --entrypoint python3 "$SERVE_IMAGE:$SERVE_TAG" -c \
    "import ssl, redis.asyncio, opentelemetry.sdk; assert ssl.create_default_context().cert_store_stats()['x509_ca'] > 0"
}

build_locust_image() {
  local dir=$STATE/locust-image
  mkdir -p "$dir"
  # What the stock locustio/locust image is to the chart: `locust` on PATH, user 1000.
  cat >"$dir/Dockerfile" <<EOF
FROM $BASE_IMAGE_E2E
ARG PIP_INDEX_URL
RUN python3 -m venv /opt/locust && /opt/locust/bin/pip install --no-cache-dir 'locust>=2.30,<3' \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp locust
ENV PATH=/opt/locust/bin:\$PATH HOME=/tmp
USER 1000
ENTRYPOINT ["locust"]
EOF
  DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "PIP_INDEX_URL=$WHEELS_URL" \
    -t "$LOCUST_IMAGE" "$dir" >/dev/null
}

# ResNet50 with seeded random weights in a .weights.h5 file: a real weights file of the real
# architecture, loaded by the pods from a PersistentVolume (weights.source=pvc), with no
# download. The same file on the host gives the expected top-k.
make_weights() {
  [ -s "$WEIGHTS_DIR/$WEIGHTS_FILE" ] && return 0
  mkdir -p "$WEIGHTS_DIR/models"
  "$PYTHON" scripts/e2e/checks.py make-weights --out "$WEIGHTS_DIR/$WEIGHTS_FILE"
}
