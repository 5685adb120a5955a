# The Makefile builds its own virtual environment, so a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every runtime and test dependency pinned (==) to a resolution 'make test' passed with; the
# image installs the same pins. 'make constraints' refreshes it.
CONSTRAINTS := constraints.txt

.PHONY: help install constraints lint typecheck unit test deploy-check demo bench clean

help:
	@echo "make demo         run the relay end to end on an embedded database and emulator"
	@echo "make test         lint, type-check and run the whole test suite"
	@echo "make bench        run the benchmark suite (see docs/benchmarks.md)"
	@echo "make constraints  re-resolve the dependencies and pin them in $(CONSTRAINTS)"

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# The distribution was called 'relay' (a name PyPI gives to an unrelated project); a venv
	@# made before the rename still holds it, and its copy of the package would shadow this one.
	if $(BIN)/pip show --quiet relay >/dev/null 2>&1; then $(BIN)/pip uninstall --quiet --yes relay; fi
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[test,embedded,otel]'
	touch $(STAMP)

install: $(STAMP)

# The newest releases pyproject.toml allows, resolved in a scratch venv and pinned. Then run
# 'make test' (it reinstalls .venv from the new pins) and commit constraints.txt if it passes.
constraints:
	scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && \
	$(PYTHON) -m venv "$$scratch" && \
	"$$scratch/bin/pip" install --quiet --upgrade pip && \
	"$$scratch/bin/pip" install --quiet '.[test,embedded,otel]' && \
	{ echo "# Pinned dependencies of scalepoint-outbox-relay[test,embedded,otel], resolved by"; \
	  echo "# 'make constraints' with $$("$$scratch/bin/python" -V) on $$(uname -s)."; \
	  echo "# Used by 'make install' and the Dockerfile (pip install -c constraints.txt)."; \
	  echo "# To refresh: make constraints && make test, then commit it if the tests pass."; \
	  "$$scratch/bin/pip" freeze --exclude scalepoint-outbox-relay; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

lint: $(STAMP)
	$(BIN)/ruff check relay tests bench migrations
	$(BIN)/ruff format --check relay tests bench migrations
	$(BIN)/lint-imports

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
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .relay-demo
