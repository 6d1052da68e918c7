#!/usr/bin/env bash
# The GPU benchmark in one command, for a machine with a GPU and no network:
#   scripts/gpu_bench.sh [OUT] [--cpu-smoke] [loadtest.bench.gpu options]
# Installs the wheels of .whl/ (`make gpu-wheels` where the network is; WHEELS=DIR for
# another folder) into a temporary folder, runs python -m loadtest.bench.gpu, and leaves bench.json, bench.log and the
# service's log in OUT (default reports/gpu-bench). Nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=reports/gpu-bench
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
    "$WHEELS"/*.whl
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -m loadtest.bench.gpu --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
