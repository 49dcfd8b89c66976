# The two set-up commands of the README: `make demo` and `make test`. Each installs what it needs,
# so either works on a fresh machine.
#
# Where they install: the active virtualenv when there is one (VIRTUAL_ENV is set), otherwise a
# project virtualenv ./.venv, created on first use. A stock Debian/Ubuntu Python is "externally
# managed" (PEP 668) and refuses `pip install` outside a virtualenv; ./.venv avoids that.
# PYTHON=/path/to/python overrides both (e.g. a conda environment).
ifdef VIRTUAL_ENV
PYTHON ?= $(VIRTUAL_ENV)/bin/python
VENV_PYTHON :=
else
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
VENV_PYTHON := $(VENV)/bin/python
endif
BASE_PYTHON ?= python3
PIP = $(PYTHON) -m pip
# torch first, pinned: on machines whose pip finds the CPU wheel (a local wheel folder or the
# PyTorch CPU index) this is the CPU build; on a stock Linux machine PyPI's torch==2.13.0 is the
# CUDA build (gigabytes). For CPU torch there: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_FLAGS = $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: install install-test demo test test-slow tf4 lint venv

# Create ./.venv when no virtualenv is active (nothing to do otherwise).
venv: $(VENV_PYTHON)

ifndef VIRTUAL_ENV
$(VENV)/bin/python:
	@$(BASE_PYTHON) -m venv $(VENV) || { echo "Could not create $(VENV) with $(BASE_PYTHON) -m venv; on Debian/Ubuntu install python3-venv (apt install python3-venv), or activate a virtualenv and re-run." >&2; rm -rf $(VENV); exit 1; }
	@echo "Created the project virtualenv $(VENV) (activate it with: . $(VENV)/bin/activate)"
endif

# Install progress, one line per step: `pip -q` prints nothing while it works, and torch is by
# far the largest step (its CPU wheel is ~190 MB, ~750 MB installed; PyPI's default Linux build
# is the CUDA one, several GB).
TORCH_STEP = @echo "Installing $(TORCH)$(if $(TORCH_INDEX), from $(TORCH_INDEX),) (the largest step: ~190 MB for the CPU build, several GB for a CUDA build; nothing is printed until it is done)..."

INSTALLED = Installed $(if $(VENV_PYTHON),into $(VENV); put headscope on your PATH with: . $(VENV)/bin/activate,for $(PYTHON))

install: venv
	$(TORCH_STEP)
	@$(PIP) install -q $(TORCH_FLAGS) $(TORCH)
	@echo "Installing headscope (editable) and its dependencies: transformers, safetensors, numpy, ..."
	@$(PIP) install -q -e .
	@echo "$(INSTALLED)"

install-test: venv
	$(TORCH_STEP)
	@$(PIP) install -q $(TORCH_FLAGS) $(TORCH)
	@echo "Installing headscope (editable) with its test extras: transformers, pytest, hypothesis, ..."
	@$(PIP) install -q -e '.[test]'
	@echo "$(INSTALLED)"

# The main job on its embedded default: real BERT-tiny vs its simulated large-head variant.
demo: install
	$(PYTHON) -m headscope demo

# The default suite (< ~10 min on 2 cores). Slow tests: `make test-slow`.
test: install-test
	$(PYTHON) -m pytest -q

# Second transformers major for the checkpoint-compatibility tests (its own virtualenv,
# .venv-tf4, made by the script).
tf4:
	bash scripts/tf4-venv.sh $(BASE_PYTHON)

test-slow: install-test tf4
	$(PYTHON) -m pytest -q -m slow

lint:
	$(PYTHON) -m ruff check headscope tests
	$(PYTHON) -m mypy
