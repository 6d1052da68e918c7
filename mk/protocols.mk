# KServe V2 / Open Inference Protocol and TensorFlow Serving REST (docs/PROTOCOLS.md).
# tests/system/protocols drives the real server with Triton's own HTTP client.

EXTRAS += protocols

.PHONY: test-protocols
test-protocols: venv ## Run the KServe V2 and TensorFlow Serving protocol tests
	$(BIN)/pytest tests/system/protocols -q
