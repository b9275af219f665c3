# memgauge: `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STORE ?= $(CURDIR)/.demo/results.sqlite
PORT ?= 8501
export TORCHAO_FORCE_SKIP_LOADING_SO_FILES := 1

.PHONY: setup demo test lint format bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 first: its CPU build; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e '.[techniques,kernels,gpu,ui,reports,postgres,dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check memgauge tests benchmarks scripts
	$(BIN)/ruff format --check memgauge tests benchmarks scripts

format: setup
	$(BIN)/ruff check --fix memgauge tests benchmarks scripts
	$(BIN)/ruff format memgauge tests benchmarks scripts

test: setup lint
	$(BIN)/python -m pytest -q -ra

demo: setup
	mkdir -p .demo
	$(BIN)/memgauge --store $(STORE) sweep --suite quick
	@if $(BIN)/memgauge dashboard --help >/dev/null 2>&1; then \
		echo "dashboard: http://127.0.0.1:$(PORT)  (Ctrl-C to stop)"; \
		$(BIN)/memgauge --store $(STORE) dashboard --port $(PORT); \
	fi

bench: setup
	mkdir -p results
	$(BIN)/python -m benchmarks.run --out results/bench.json

# no `setup` dependency: the GPU machine has no registry; it uses its own python3
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf .demo build dist *.egg-info
