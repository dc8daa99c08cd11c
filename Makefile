# The README's two commands: `make run` (daemon + example tenant, embedded Postgres/Redis)
# and `make test`. Both create .venv and install into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= oraclewad.toml
PYTEST_ARGS ?=

.PHONY: run test lint check proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/oraclewad run --config $(CONFIG)

test: $(VENV)/.installed-test
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

check: $(VENV)/.installed-run
	$(BIN)/oraclewad check --config $(CONFIG)

# Regenerate oraclewad/_proto from proto/ (commit the result; a test fails if it is stale).
proto: $(VENV)/.installed-test
	$(BIN)/python scripts/gen_proto.py

bench: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[bench]'
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) var build *.egg-info
