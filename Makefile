# sessionlen: `make run` runs the whole pipeline, `make test` runs the tests. `make help` lists all.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCALE ?= demo
SEED ?= 1
ENGINE ?= local
PORT ?= 8888
ARGS ?=
# Jupyter refuses to start as root (common in containers) unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.DEFAULT_GOAL := help
.PHONY: help run test test-all lint notebook report clean strip

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name sessionlen --display-name "sessionlen (.venv)" >/dev/null
	$(BIN)/python -m utils.core.spark_classes 2>$(VENV)/spark-classes.log || \
		{ tail -n 5 $(VENV)/spark-classes.log; echo "Spark commands will start without the class archive"; }
	touch $(STAMP)

run: $(STAMP) ## run every notebook on the default data (SCALE=demo, real data if in data/raw)
	$(BIN)/sessionlen run --scale $(SCALE) --seed $(SEED) --engine $(ENGINE)

test: $(STAMP) ## run the test suite (fast tier)
	$(BIN)/python -m pytest -q

test-all: $(STAMP) ## run every test, slow fuzz/fault/scale tiers included
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP) ## ruff over the package, tests and benchmarks
	$(BIN)/ruff check utils tests benchmarks

notebook: $(STAMP) ## JupyterLab on the project kernel (PORT=8888, ARGS="--no-browser ...")
	$(BIN)/jupyter lab --port=$(PORT) --MultiKernelManager.default_kernel_name=sessionlen $(ROOT_FLAG) $(ARGS)

report: $(STAMP) ## rebuild work/$(SCALE)/results/report.md from its experiments.csv
	$(BIN)/sessionlen report --work work/$(SCALE)

strip: $(STAMP) ## strip outputs from every committed notebook
	$(BIN)/python -m utils.core.notebook_tools strip data_processing baseline models_with_clusters

clean: ## remove the venv and generated work (raw data is kept)
	rm -rf $(VENV) work data/synthetic
