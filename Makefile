# The Makefile builds its own virtual environment, so a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install lint typecheck unit test deploy-check demo bench clean

help:
	@echo "make demo    run the relay end to end on an embedded database and emulator"
	@echo "make test    lint, type-check and run the whole test suite"
	@echo "make bench   run the benchmark suite (see docs/benchmarks.md)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# The distribution was called 'relay' (a name PyPI gives to an unrelated project); a venv
	@# made before the rename still holds it, and its copy of the package would shadow this one.
	if $(BIN)/pip show --quiet relay >/dev/null 2>&1; then $(BIN)/pip uninstall --quiet --yes relay; fi
	$(BIN)/pip install --quiet -e '.[test,embedded]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench migrations
	$(BIN)/ruff format --check relay tests bench migrations

typecheck: $(STAMP)
	$(BIN)/mypy

deploy-check: $(STAMP)
	$(BIN)/python deploy/validate.py

test: lint typecheck deploy-check
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/relay demo

bench: $(STAMP)
	$(BIN)/python -m bench.suite

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
