# resnet-serve — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TOOLS  ?= .tools
# Extras installed into the development virtual environment (topic makefiles append).
EXTRAS := dev tensorflow jax
# Prerequisites of `make test` beyond the virtual environment (topic makefiles append).
TEST_PREREQS :=
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Topic makefiles: charts, images, load tests, reliability...
-include mk/*.mk

EMPTY :=
COMMA := ,
SPACE := $(EMPTY) $(EMPTY)
EXTRAS_CSV = $(subst $(SPACE),$(COMMA),$(strip $(EXTRAS)))
STAMP = $(VENV)/.installed-$(subst $(COMMA),-,$(EXTRAS_CSV))

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS_CSV)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create .venv and install the package with its test extras

.PHONY: run
run: venv ## Start the service on http://127.0.0.1:8000 (ResNet50; imagenet weights if cached, else random)
	$(BIN)/python -m service

.PHONY: test
test: venv $(TEST_PREREQS) ## Run the whole test suite
	$(BIN)/pytest $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## ruff and mypy
	$(BIN)/ruff check service tests loadtest
	$(BIN)/mypy service

.PHONY: bench
bench: venv ## Benchmark: model ceiling vs service vs naive design (run by hand, minutes; BACKEND=jax)
	$(BIN)/python -m loadtest.bench.resnet $(if $(BACKEND),--backend $(BACKEND)) $(BENCH_ARGS)

.PHONY: clean
clean: ## Remove the virtual environment, tools and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
