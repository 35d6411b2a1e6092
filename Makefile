# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Reinstall only when the project's metadata changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/freezer-app gui --demo

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check freezer_app tests
	$(VENV)/bin/ruff format --check freezer_app tests
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff format freezer_app tests
	$(VENV)/bin/ruff check --fix freezer_app tests

bench: $(VENV)/.installed-test
	$(PY) tests/benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
