# What operators look at (docs/OPERATIONS.md): Debian's prometheus (with promtool), which the
# monitoring tests run for real against the service, and the `otel` extra (the OpenTelemetry
# SDK and OTLP exporters) for traces.

EXTRAS += otel
TEST_PREREQS += prometheus

.PHONY: prometheus
prometheus: ## Install Debian's prometheus and promtool if missing (tests/monitoring runs them)
	@{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || \
	  { apt-get update && apt-get install -y --no-install-recommends prometheus; }
	@prometheus --version 2>&1 | head -1

.PHONY: test-monitoring
test-monitoring: venv prometheus ## Alert rules (promtool), dashboard and autoscaling queries on a real Prometheus, traces
	$(BIN)/pytest tests/monitoring -q
