# The two set-up commands of the README. Each installs what it needs, so either works on a fresh
# machine. PYTHON may point at a virtualenv's interpreter.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install install-test demo test test-slow tf4 lint

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'

# The main job on its embedded default: real BERT-tiny vs its simulated large-head variant.
demo: install
	$(PYTHON) -m headscope demo

# The default suite (< ~10 min on 2 cores). Slow tests: `make test-slow`.
test: install-test
	$(PYTHON) -m pytest -q

# Second transformers major for the checkpoint-compatibility tests (a separate virtualenv).
tf4:
	bash scripts/tf4-venv.sh

test-slow: install-test tf4
	$(PYTHON) -m pytest -q -m slow

lint:
	$(PYTHON) -m ruff check headscope tests
	$(PYTHON) -m mypy
