# Container images (docs/DEPLOY.md, "The images"): one Dockerfile, a GPU and a CPU variant.

# Registry prefix for the image name, e.g. REGISTRY=ghcr.io/acme; empty: a local name.
REGISTRY  ?=
APP_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
TAG       ?= $(APP_VERSION)
IMAGE     ?= $(if $(REGISTRY),$(REGISTRY)/)resnet-serve
# true: bake the ImageNet weights into the image; false: mount them (weights.source pvc/url).
BAKE_WEIGHTS ?= true
DOCKER    ?= docker
# Further `docker build` options for every variant (`make e2e` adds --network host and a
# PIP_INDEX_URL build argument).
DOCKER_BUILD_ARGS ?=
CPU_BASE_IMAGE ?= ubuntu:24.04
# pip extras of each variant: every feature the chart can switch on (redis.mode internal or
# external needs `redis`) is in all; the GPU variant has `gpu` (TensorFlow and its CUDA wheels),
# the CPU one `tensorflow`, the JAX one `jax-gpu` (JAX and its CUDA 13 wheels).
GPU_EXTRAS ?= gpu,redis,otel
CPU_EXTRAS ?= tensorflow,redis,otel
JAX_EXTRAS ?= jax-gpu,redis,otel
JAX_BASE_IMAGE ?= nvidia/cuda:13.0.1-base-ubuntu24.04

.PHONY: image
image: ## Build the GPU image $(IMAGE):$(TAG) (needs a Docker engine)
	$(DOCKER) build $(DOCKER_BUILD_ARGS) -f docker/Dockerfile -t $(IMAGE):$(TAG) --build-arg EXTRAS=$(GPU_EXTRAS) \
	  --build-arg BAKE_WEIGHTS=$(BAKE_WEIGHTS) --build-arg VERSION=$(APP_VERSION) .

.PHONY: image-cpu
image-cpu: ## Build the CPU image $(IMAGE):$(TAG)-cpu (needs a Docker engine)
	$(DOCKER) build $(DOCKER_BUILD_ARGS) -f docker/Dockerfile -t $(IMAGE):$(TAG)-cpu \
	  --build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) --build-arg EXTRAS=$(CPU_EXTRAS) \
	  --build-arg BAKE_WEIGHTS=$(BAKE_WEIGHTS) --build-arg VERSION=$(APP_VERSION) .

.PHONY: image-jax
image-jax: ## Build the GPU image with the JAX backend $(IMAGE):$(TAG)-jax (needs a Docker engine)
	$(DOCKER) build $(DOCKER_BUILD_ARGS) -f docker/Dockerfile -t $(IMAGE):$(TAG)-jax \
	  --build-arg BASE_IMAGE=$(JAX_BASE_IMAGE) --build-arg EXTRAS=$(JAX_EXTRAS) \
	  --build-arg BACKEND=jax --build-arg CONSTRAINTS=constraints-jax.txt \
	  --build-arg BAKE_WEIGHTS=$(BAKE_WEIGHTS) --build-arg VERSION=$(APP_VERSION) .

.PHONY: push
push: ## Push the variants built here (GPU, -cpu, -jax) to REGISTRY (make push REGISTRY=ghcr.io/acme TAG=0.1.0)
	@test -n "$(REGISTRY)" || { echo "set REGISTRY, e.g. make push REGISTRY=ghcr.io/acme"; exit 2; }
	@pushed=; for tag in $(TAG) $(TAG)-cpu $(TAG)-jax; do \
	  $(DOCKER) image inspect $(IMAGE):$$tag >/dev/null 2>&1 || continue; \
	  echo "$(DOCKER) push $(IMAGE):$$tag"; $(DOCKER) push $(IMAGE):$$tag || exit 1; pushed=1; \
	done; \
	test -n "$$pushed" || { echo "no $(IMAGE):$(TAG), -cpu or -jax here: make image (image-cpu, image-jax) first"; exit 2; }
