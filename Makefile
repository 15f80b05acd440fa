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

# Every committed benchmark, with the command that produced its results (hours on 2 cores; each
# bench/<topic>/README.md lists more options). Run on a quiet machine: the figures are latencies.
bench: setup
	$(BIN)/python bench/int8/run.py --rounds 5 --repeats 20
	$(BIN)/python bench/profiler/run.py
	$(BIN)/python bench/tvm/bench_tvm.py --trials 0 16 --repeats 20 --rounds 3
	OMP_NUM_THREADS=1 $(BIN)/python bench/otov2/run.py --model resnet20 --epochs 3
	OMP_NUM_THREADS=1 $(BIN)/python bench/otov2/run.py --model mobilenetv2_cifar --width 0.5 --epochs 3
	$(BIN)/python bench/otov2/table.py
	$(BIN)/python bench/lr2vq/run.py --model resnet20 --out bench/lr2vq/results
	$(BIN)/python bench/spaceevo/predictor_accuracy.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
