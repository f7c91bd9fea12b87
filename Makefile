# The README's commands, nothing hidden. PY is the virtual environment's python.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# PyTorch's CPU wheel index: on Linux, PyPI's torch bundles CUDA (GBs); the +cpu build from here ranks higher.
# It is added only where it answers (offline mirrors and local wheels: pip's own sources, without retries).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CPU_INDEX = $$($(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/', timeout=10); \
	print('--extra-index-url $(TORCH_INDEX)')" 2>/dev/null)

.PHONY: setup data demo test test-ray test-all lint bench bench-gpu clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first (GPU users: install the CUDA build of torch into $(VENV) before `make setup`)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(CPU_INDEX) $(TORCH)

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install -q -e ".[dev,ray]"
	touch $@

data:
	@test -d /usr/share/datasets/fashion-mnist || \
	  (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || \
	  echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or see README (Data)"

setup: $(VENV)/.installed data

demo: setup
	$(VENV)/bin/gst --portable demo

test: setup
	$(PY) -m pytest -m "not slow"

test-ray: setup  # a real two-node `ray start` cluster on 127.0.0.1 loses a node mid-study (2-3 min on 2 shared cores)
	$(PY) -m pytest tests/test_ray_cluster.py

test-all: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples

bench: setup
	$(PY) benchmarks/bench_overhead.py
	$(PY) benchmarks/bench_lanczos.py

bench-gpu: setup
	$(PY) benchmarks/bench_throughput.py --device cuda

clean:
	rm -rf $(VENV) .pytest_cache
