# edgecompress: set-up, demo, tests, benchmarks. `make demo` and `make test` work on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: setup demo test test-all bench lint clean

setup: $(STAMP)

# torch first (the CPU build on this machine's disk), then the project and its dev tools.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	command -v aarch64-linux-gnu-g++ >/dev/null || (apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu) || echo "warning: aarch64-linux-gnu-g++ not installed; TVM cross-compile tests will skip"
	touch $(STAMP)

demo: setup
	$(BIN)/edgecompress demo -o runs/demo

# CI runs this. gpu/tensorrt/slow tests are skipped by their markers (conftest says why).
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Everything that runs without a GPU, full-size models included (tens of minutes on 2 cores).
test-all: setup
	EDGECOMPRESS_SLOW=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
