PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test unit lint typecheck

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e '.[dev]'

test: install
	$(PY) -m pytest -q

unit: install
	$(PY) -m pytest -q tests/unit tests/contract

lint: install
	$(PY) -m ruff check service tests
	$(PY) -m ruff format --check service tests

typecheck: install
	$(PY) -m mypy
