# KServe V2 / Open Inference Protocol and TensorFlow Serving REST (docs/PROTOCOLS.md).
# tests/system/protocols drives the real server with Triton's own HTTP client.

EXTRAS += protocols

.PHONY: test-protocols
test-protocols: venv ## Run the KServe V2 and TensorFlow Serving protocol tests
	$(BIN)/pytest tests/system/protocols -q

# gRPC clients of other implementations than grpcio's, for the interoperability tests
# (tests/system/protocols/test_grpc_interop.py): grpc-go (what Kubernetes' gRPC probes use),
# from Debian's packages, and grpc-js (Node's own HTTP/2), from npm at a pinned version.
INTEROP      := tests/support/interop
GRPC_CLIENTS := $(TOOLS)/grpc-clients
TEST_PREREQS += grpc-clients

$(GRPC_CLIENTS)/grpc-go: $(INTEROP)/grpc_go/main.go
	@command -v go >/dev/null 2>&1 && test -d /usr/share/gocode/src/google.golang.org/grpc || \
	  { apt-get update && apt-get install -y golang-go golang-google-grpc-dev; }
	@mkdir -p $(GRPC_CLIENTS)/gopath/src/grpc-go-client
	cp $< $(GRPC_CLIENTS)/gopath/src/grpc-go-client/main.go
	cd $(GRPC_CLIENTS) && GO111MODULE=off GOPATH=$(CURDIR)/$(GRPC_CLIENTS)/gopath:/usr/share/gocode \
	  GOCACHE=$(CURDIR)/$(GRPC_CLIENTS)/gocache go build -o grpc-go grpc-go-client

$(GRPC_CLIENTS)/grpc-js/.installed: $(INTEROP)/grpc_js/package.json $(INTEROP)/grpc_js/client.js
	@command -v npm >/dev/null 2>&1 || { apt-get update && apt-get install -y nodejs npm; }
	@mkdir -p $(GRPC_CLIENTS)/grpc-js
	cp $(INTEROP)/grpc_js/package.json $(INTEROP)/grpc_js/client.js $(GRPC_CLIENTS)/grpc-js/
	cd $(GRPC_CLIENTS)/grpc-js && npm install --silent --no-audit --no-fund
	@touch $@

# Real HTTP/2 proxies in front of the gRPC port for the same tests: nginx's grpc_pass (what
# ingress-nginx runs) and HAProxy, from Debian's packages (tests/support/proxies.py runs them).
TEST_PREREQS += proxies

.PHONY: proxies
proxies: ## Install Debian's nginx and haproxy if they are not on PATH (the gRPC proxy tests)
	@{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null 2>&1 && \
	  { command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null 2>&1 || \
	  { apt-get update && apt-get install -y --no-install-recommends nginx haproxy; }

.PHONY: grpc-clients
grpc-clients: $(GRPC_CLIENTS)/grpc-go $(GRPC_CLIENTS)/grpc-js/.installed ## Build the grpc-go and grpc-js clients of the gRPC interoperability tests
