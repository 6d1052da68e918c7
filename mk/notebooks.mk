# Tutorial notebooks (notebooks/). `make test` executes every one of them in local mode through
# tests/notebooks (papermill); they are stored without outputs, which a test checks.

EXTRAS += notebooks

NOTEBOOK ?= notebooks/01-develop-model.ipynb
# Where a notebook's tooling points: empty or "local" renders and prints instead of applying;
# a kubectl context name runs the cluster steps against that cluster.
CLUSTER  ?= local

.PHONY: test-notebooks
test-notebooks: venv tools ## Execute every tutorial notebook in local mode
	$(BIN)/pytest tests/notebooks -q

.PHONY: notebook
notebook: venv ## Execute one notebook with papermill (make notebook NOTEBOOK=notebooks/04-deploy.ipynb CLUSTER=my-context)
	@mkdir -p reports/notebooks
	cd notebooks && ../$(BIN)/papermill $(notdir $(NOTEBOOK)) \
	  ../reports/notebooks/$(notdir $(NOTEBOOK)) -p CLUSTER $(CLUSTER)

.PHONY: strip-notebooks
strip-notebooks: venv ## Remove outputs and execution counts from the stored notebooks
	$(BIN)/python scripts/strip_notebooks.py notebooks/*.ipynb
