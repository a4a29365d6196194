# The two set-up commands of the README. Both create a local virtual environment (.venv) with the pinned stack.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: run lint test install install-dev clean

# Install and run the main job: train the default tiny model on the built-in corpus, then report.
run: install
	$(BIN)/chunklm train --workdir runs/default

# The static checks (configured in pyproject.toml): formatting, lint rules, types, the architecture contracts.
lint: install-dev
	$(BIN)/ruff format --check chunklm tests
	$(BIN)/ruff check chunklm tests
	$(BIN)/mypy
	$(BIN)/lint-imports

# Install with the dev extras, run the static checks, then the default test suite.
test: lint
	$(BIN)/python -m pytest -q

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; sys.exit("chunklm needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) runs
