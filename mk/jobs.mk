# Multi-model pipelines: the pipelining benchmark (stand-in accelerators, docs/BENCHMARKS.md).

.PHONY: bench-pipeline
bench-pipeline: venv ## Benchmark: pipelined stages vs one after another (stand-in accelerator; ~20 s)
	$(BIN)/python -m loadtest.bench.pipeline --json reports/pipeline-bench.json
