# The Helm chart (docs/DEPLOY.md); the images are in mk/images.mk, the tools in mk/tools.mk.

EXTRAS += chart

CHART_DIR ?= charts/resnet-serve

.PHONY: chart-lint
chart-lint: tools ## helm lint --strict the chart with every shipped values file, hadolint the Dockerfile
	@set -e; for f in "" $$(cd $(CHART_DIR) && ls values-*.yaml ci/*.yaml); do \
	  echo "helm lint --strict $(CHART_DIR) $${f:+-f $$f}"; \
	  $(HELM) lint --strict --quiet $(CHART_DIR) $${f:+-f $(CHART_DIR)/$$f}; \
	done
	$(HADOLINT) docker/Dockerfile

.PHONY: chart-readme
chart-readme: ## Regenerate the values table of charts/resnet-serve/README.md from values.yaml
	$(PYTHON) scripts/chart_readme.py --write

.PHONY: e2e
e2e: venv tools prometheus ## Real Kubernetes 1.20 here: build it and the CPU image, install, helm test, drain, upgrade, GPU scheduling, Locust, scraping through the API server (root; ~30 min cold, less warm)
	PYTHON=$(abspath $(BIN))/python PIP=$(abspath $(BIN))/pip bash scripts/e2e/run.sh

.PHONY: gpu-smoke
gpu-smoke: ## On an NVIDIA GPU machine: TensorFlow sees the GPU; FP32 vs mixed-precision ceiling
	$(BIN)/python scripts/gpu_smoke.py
