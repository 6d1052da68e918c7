# Load tests, capacity reports and the cluster CLI (docs/LOADTEST.md).

EXTRAS += loadtest cluster

# Target URL; empty: a local service is started for the run (loopback only) and stopped after.
HOST     ?=
# Load shape: constant | step | spike | soak (loadtest/suite/shapes.py).
SHAPE    ?= step
USERS    ?= 8
DURATION ?= 60s
# Report folder (git-ignored /reports/).
REPORT   ?= reports/$(SHAPE)-$(shell date +%Y%m%d-%H%M%S)
# Which user classes run (Locust tags): classify-raw, classify-multipart, classify-b64, v2, grpc, tfserving, jobs.
TAGS     ?= classify-raw
# Capacity search: p99 objective in ms, error-rate ceiling, target request rate for sizing.
SLO_MS   ?= 500
TARGET_RPS ?= 100
LOADTEST_ARGS ?=

LOADTEST_TARGET = $(if $(HOST),--host $(HOST),--start-local)

.PHONY: loadtest
loadtest: venv ## Headless Locust run + report (make loadtest [HOST=http://...] [SHAPE=step] [USERS=8])
	$(BIN)/python -m loadtest run $(LOADTEST_TARGET) --shape $(SHAPE) --users $(USERS) \
	  --run-time $(DURATION) --tags $(TAGS) --out $(REPORT) $(LOADTEST_ARGS)

.PHONY: capacity
capacity: venv ## Step-load capacity search: highest rate under SLO_MS, replicas for TARGET_RPS, HPA target
	$(BIN)/python -m loadtest capacity $(LOADTEST_TARGET) --slo-p99-ms $(SLO_MS) \
	  --target-rps $(TARGET_RPS) --tags $(TAGS) \
	  --out $(if $(filter command line,$(origin REPORT)),$(REPORT),reports/capacity-$(shell date +%Y%m%d-%H%M%S)) \
	  $(LOADTEST_ARGS)

.PHONY: bench-engine
bench-engine: venv ## Benchmark: the accelerator process alone on one core, CPU per item and per batch (minutes)
	$(BIN)/python -m loadtest.bench.engine --json reports/bench-engine.json $(BENCH_ARGS)

.PHONY: bench-serving
bench-serving: venv ## Benchmark: service vs the decode ceiling, HTTP and gRPC, stand-in model (wrk, h2load; minutes)
	@command -v wrk >/dev/null 2>&1 && command -v h2load >/dev/null 2>&1 || \
	  { apt-get update && apt-get install -y wrk nghttp2-client; }
	$(BIN)/python -m loadtest.bench.serving --json reports/bench-serving.json $(BENCH_ARGS)
