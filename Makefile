# One command each: `make demo` runs the whole chain on loopback, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck imports pytest system-deps venv clean

# tox.ini runs the same commands, one environment each (lint, typecheck, tests).
test: system-deps $(STAMP)
	$(BIN)/ruff check modoboa_pro tests scripts
	$(BIN)/mypy modoboa_pro
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

demo: system-deps $(STAMP)
	$(BIN)/python -m modoboa_pro.demo

system-deps:
	@bash scripts/system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check modoboa_pro tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy modoboa_pro

imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .tox
