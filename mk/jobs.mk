# Multi-model pipelines and asynchronous jobs (issue 4): the pipelining benchmark.

.PHONY: bench-pipeline
bench-pipeline: venv ## Benchmark: pipelined stages vs one after another (stand-in accelerator; ~20 s)
	$(BIN)/python loadtest/pipeline_bench.py --json reports/pipeline-bench.json
