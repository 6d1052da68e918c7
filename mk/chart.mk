# Container images and the Helm chart (docs/DEPLOY.md). Tools come from mk/tools.mk.

EXTRAS += chart

CHART_DIR ?= charts/resnet-serve
# Registry prefix for the image name, e.g. REGISTRY=ghcr.io/acme; empty: a local name.
REGISTRY  ?=
APP_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TAG       ?= $(APP_VERSION)
IMAGE     ?= $(if $(REGISTRY),$(REGISTRY)/)resnet-serve
# true: bake the ImageNet weights into the image; false: mount them (weights.source pvc/url).
BAKE_WEIGHTS ?= true
DOCKER    ?= docker
CPU_BASE_IMAGE ?= ubuntu:24.04

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

.PHONY: image
image: ## Build the GPU image $(IMAGE):$(TAG) (needs a Docker engine)
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE):$(TAG) \
	  --build-arg BAKE_WEIGHTS=$(BAKE_WEIGHTS) --build-arg VERSION=$(APP_VERSION) .

.PHONY: image-cpu
image-cpu: ## Build the CPU image $(IMAGE):$(TAG)-cpu (needs a Docker engine)
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE):$(TAG)-cpu \
	  --build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) --build-arg EXTRAS= \
	  --build-arg BAKE_WEIGHTS=$(BAKE_WEIGHTS) --build-arg VERSION=$(APP_VERSION) .

.PHONY: push
push: ## Push both images to REGISTRY (make push REGISTRY=ghcr.io/acme TAG=0.1.0)
	@test -n "$(REGISTRY)" || { echo "set REGISTRY, e.g. make push REGISTRY=ghcr.io/acme"; exit 2; }
	$(DOCKER) push $(IMAGE):$(TAG)
	$(DOCKER) push $(IMAGE):$(TAG)-cpu

.PHONY: e2e-kind
e2e-kind: tools ## Throwaway kind cluster: CPU image, helm install, helm test, 1-minute Locust run (needs Docker + kind)
	HELM=$(HELM) KUBECTL=$(KUBECTL) IMAGE=$(IMAGE) TAG=$(TAG) PYTHON=$(BIN)/python \
	  bash scripts/e2e-kind.sh

.PHONY: gpu-smoke
gpu-smoke: ## On an NVIDIA GPU machine: TensorFlow sees the GPU; FP32 vs mixed-precision ceiling
	$(BIN)/python scripts/gpu_smoke.py
